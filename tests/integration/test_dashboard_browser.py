"""Dashboard review in a real browser: a tiny ``dlforge train`` logs to a real ``mlflow server`` over HTTP, then
headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) opens the experiment's runs table
— the URL ``dlforge ui`` prints — finds the run, and opens its page (metrics) and its artifacts.
Screenshots are saved under the test's tmp folder (path printed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.tracking import experiment_url
from tests.servers import mlflow_server

pytestmark = [pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
FLAGS += ["--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1500,1000"]


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install chromium chromium-driver (.ci/run does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromium and chromedriver
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def wait_for_text(driver, text: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: text in d.find_element("tag name", "body").text)


@pytest.mark.timeout(240)
def test_browser_shows_the_run_its_metrics_and_artifacts(browser, cli, tmp_path):
    with mlflow_server(tmp_path) as url:
        args = ["model.family=mlp", "data.source=builtin:iris", "trainer.max_epochs=2", "data.batch_size=16"]
        args += ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", f"output_dir={tmp_path / 'out'}"]
        code, _, err = cli("train", *args, f"tracking.uri={url}", "tracking.experiment=review")
        assert code == 0, err
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("review")
        (run,) = client.search_runs([experiment.experiment_id])

        runs_table = experiment_url(url, experiment.experiment_id)
        browser.get(runs_table)
        wait_for_text(browser, run.info.run_name)
        browser.save_screenshot(str(tmp_path / "runs.png"))

        browser.get(f"{runs_table}/{run.info.run_id}")
        for metric in ("val/acc", "val/loss", "test/acc"):
            wait_for_text(browser, metric)
        browser.save_screenshot(str(tmp_path / "run.png"))

        browser.get(f"{runs_table}/{run.info.run_id}/artifacts")
        for artifact in ("config.yaml", "checkpoints", "review"):
            wait_for_text(browser, artifact)
        browser.save_screenshot(str(tmp_path / "artifacts.png"))
    print(f"screenshots: {tmp_path}/{{runs,run,artifacts}}.png")
