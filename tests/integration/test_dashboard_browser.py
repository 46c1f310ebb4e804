"""Dashboard review in a real browser: ``dlforge run --quick`` logs to a real ``mlflow server`` over HTTP (its
train stage is ``dlforge train`` in a child process), then headless Chromium (Debian's ``chromium`` +
``chromium-driver``, driven by selenium) opens what a reviewer opens — the runs table at the URL ``dlforge ui``
prints, the run pages, their artifacts, the registry — and checks what is on screen. Screenshots are saved under the
module's tmp folder (path printed).

The server, the pipeline and the browser are made once for the module: each test only reads them (the pipeline
takes minutes on two cores; a second server or a separate ``dlforge train`` would repeat what it already logs)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from pipelines.front_page import table_columns
from pipelines.tracking import experiment_url
from tests.conftest import run_dlforge
from tests.servers import mlflow_server

pytestmark = [pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
# Wide: the runs table renders only the columns in view, and the headline metrics sit right of the run name.
FLAGS += ["--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=3800,1200"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module's tests (each opens its own pages)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install chromium chromium-driver (.ci/run does it)")
    folder = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={folder / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER), log_output=str(folder / "driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromium and chromedriver
        shutil.rmtree(folder / "chromium-profile", ignore_errors=True)


@dataclass(frozen=True)
class Reviewed:
    """What ``dlforge run --quick`` logged to the server at ``url``: its experiment and one run per stage kind."""

    url: str
    client: MlflowClient
    experiment_id: str
    kinds: dict[str, Run]
    shots: Path  # where the screenshots go

    def runs_table(self, *, view: bool = False) -> str:
        return experiment_url(self.url, self.experiment_id, view=view)


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, migrated_db) -> Reviewed:
    """A real ``mlflow server`` and one ``dlforge run --quick`` of breast-cancer MLP logged to it over HTTP."""
    root = tmp_path_factory.mktemp("review")
    shutil.copyfile(migrated_db, root / "mlflow.db")  # the server's store, its tables made: it starts sooner
    with mlflow_server(root) as url:
        done = run_dlforge(
            "run",
            "configs/breast_cancer_mlp.yaml",
            "--quick",
            "compress.quantization=dynamic",  # a fixed recipe: the autotuner may ship fp32 and write no int8 file
            f"tracking.uri={url}",
            f"output_dir={root / 'out'}",
            timeout=1200,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("breast-cancer-mlp")
        runs = client.search_runs([experiment.experiment_id])
        kinds = {r.data.tags.get("dlforge.kind"): r for r in runs}
        yield Reviewed(url, client, experiment.experiment_id, kinds, root)
    print(f"screenshots: {root}/*.png")


def wait_for_text(driver, text: str, timeout: float = 60) -> None:
    """Until ``text`` is on screen; otherwise fail with the page's text, its screenshot beside the profile."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: text in body_text(d))
    except TimeoutException:
        shot = Path(driver.capabilities["chrome"]["userDataDir"]).parent / "timeout.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(f"{text!r} not on {driver.current_url} ({shot}):\n{body_text(driver)[:3000]}") from None


@pytest.mark.timeout(1500)  # the first test to ask for the module's pipeline waits for it
def test_browser_shows_the_runs_table_the_training_run_its_metrics_and_artifacts(browser, reviewed):
    """The runs table at its plain URL (what ``dlforge ui`` prints for an experiment without a shared view), then the
    run ``dlforge train`` logged: its metrics on its page, its files under its artifacts."""
    parent, train = reviewed.kinds["pipeline"], reviewed.kinds["train"]
    runs_table = reviewed.runs_table()
    browser.get(runs_table)
    wait_for_text(browser, parent.info.run_name)
    browser.save_screenshot(str(reviewed.shots / "runs.png"))

    browser.get(f"{runs_table}/{train.info.run_id}")
    for metric in ("val/acc", "val/loss", "test/acc"):
        wait_for_text(browser, metric)
    browser.save_screenshot(str(reviewed.shots / "run.png"))

    browser.get(f"{runs_table}/{train.info.run_id}/artifacts")
    for artifact in ("config.yaml", "checkpoints", "review"):
        wait_for_text(browser, artifact)
    browser.save_screenshot(str(reviewed.shots / "artifacts.png"))


def body_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def wait_for_image(driver, name: str, timeout: float = 60) -> None:
    """Until an ``<img>`` (the artifact viewer's preview of ``name``) has loaded real pixels."""
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(d) -> bool:
        images = d.find_elements("tag name", "img")
        return name in body_text(d) and any(int(i.get_attribute("naturalWidth") or 0) > 100 for i in images)

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(loaded)


def expand_children(driver, parent_name: str, timeout: float = 60) -> None:
    """Click the expander of the runs-table row named ``parent_name`` (MLflow nests child runs under it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    link = WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.LINK_TEXT, parent_name))
    row = link.find_element(By.XPATH, "./ancestor::*[@role='row' or contains(@class, 'row')][1]")
    row.find_element(By.CSS_SELECTOR, "button, [role='button']").click()


@pytest.mark.timeout(1500)  # the first test to ask for the module's pipeline waits for it
def test_browser_reviews_a_pipeline_its_children_dataset_and_registry(browser, reviewed):
    """After ``dlforge run --quick``: the pipeline row's headline columns, the parent's description and report
    images, the child runs, the training run's dataset, and registry names without the family repeated."""
    url, client, kinds, shots = reviewed.url, reviewed.client, reviewed.kinds, reviewed.shots
    parent = kinds["pipeline"]
    runs_table = reviewed.runs_table()

    # the runs table as `dlforge ui` opens it: the pipeline row with its headline metrics as columns
    browser.get(reviewed.runs_table(view=True))
    wait_for_text(browser, parent.info.run_name)
    columns = table_columns(parent.data.metrics)  # the champion's, teacher's, student's (INT8's when shipped)
    assert {"champion/acc", "champion/size_mb", "teacher/acc", "gates/passed"} <= set(columns)
    for column in [*columns, "dlforge.champion"]:
        wait_for_text(browser, column)
    text = body_text(browser)
    for name in ("champion/acc", "gates/passed"):  # the row's values, as the table prints them
        assert repr(parent.data.metrics[name]).removesuffix(".0") in text, name
    # its child runs, nested under it
    expand_children(browser, parent.info.run_name)
    for kind in ("sweep", "train", "compress"):
        wait_for_text(browser, kinds[kind].info.run_name)
    browser.save_screenshot(str(shots / "pipeline-row.png"))

    # the parent run's page: the description with the champion and the gates
    browser.get(f"{runs_table}/{parent.info.run_id}")
    for words in ("Champion:", "Gates:", "champion/acc"):
        wait_for_text(browser, words)
    browser.save_screenshot(str(shots / "parent.png"))
    # the report's images, inside the parent run where report.md links them
    browser.get(f"{runs_table}/{parent.info.run_id}/artifacts/train/review/confusion_matrix.png")
    wait_for_image(browser, "confusion_matrix.png")
    browser.save_screenshot(str(shots / "parent-image.png"))

    # the training run: its dataset, and the plots it made
    train = kinds["train"]
    browser.get(f"{runs_table}/{train.info.run_id}")
    wait_for_text(browser, "Datasets")
    wait_for_text(browser, train.inputs.dataset_inputs[0].dataset.name)
    browser.get(f"{runs_table}/{train.info.run_id}/artifacts/review/learning_curves.png")
    wait_for_image(browser, "learning_curves.png")
    # the compress run: the ONNX files it produced, and links to their registry versions
    compress = kinds["compress"]
    browser.get(f"{runs_table}/{compress.info.run_id}/artifacts/onnx")
    wait_for_text(browser, "teacher-int8.onnx")
    browser.get(f"{runs_table}/{compress.info.run_id}")
    wait_for_text(browser, "registry")
    wait_for_text(browser, "version 1")

    # the registry: one PyTorch and one ONNX model, no family repeated; a version that says what it is
    browser.get(f"{url}/#/models")
    wait_for_text(browser, "breast-cancer-mlp-onnx")
    assert "breast-cancer-mlp-mlp" not in body_text(browser)
    champion = client.get_model_version_by_alias("breast-cancer-mlp-onnx", "champion")
    browser.get(f"{url}/#/models/breast-cancer-mlp-onnx/versions/{champion.version}")
    for words in ("quantization recipe", "Gates:", "mlflow.pyfunc.load_model", "compress run"):
        wait_for_text(browser, words)
    browser.save_screenshot(str(shots / "version.png"))
