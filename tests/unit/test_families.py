"""Every family × every data kind it accepts: build, forward, backward, fit, test, checkpoint round trip.

Parametrized over ``FAMILIES`` so a new family is covered without new tests. Data are tiny random tensors.
"""

from __future__ import annotations

import dataclasses

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dl_lightning.data.spec import DataSpec
from dl_lightning.errors import InputError
from dl_lightning.modules.gan import GANModule, SampleGridCallback
from dl_lightning.modules.optim import rescale_lr
from dl_lightning.registry import FAMILIES, build_model, load_model, monitor_for
from tests.fixtures import KINDS, SPECS, random_inputs, random_targets, tiny_spec

# small architectures keep every case well under a second
ARCH = {
    "mlp": {"hidden": [16, 8], "batch_norm": True, "dropout": 0.1},
    "cnn": {"channels": [4, 8], "kernel_size": 3, "batch_norm": True, "hidden": 16, "dropout": 0.1},
    "rnn": {"cell": "lstm", "hidden_size": 8, "num_layers": 2, "bidirectional": True, "embed_dim": 8, "dropout": 0.1},
    "transformer": {"d_model": 8, "nhead": 2, "num_layers": 1, "dim_feedforward": 16, "dropout": 0.1},
    "gan": {"latent_dim": 8, "width": 4, "dropout": 0.1},
}
CASES = [(family, kind) for family, cls in FAMILIES.items() for kind in sorted(cls.accepts)]
REJECTED = [(family, kind) for family, cls in FAMILIES.items() for kind in KINDS if kind not in cls.accepts]
TRAINER = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def inputs(spec: DataSpec, n: int) -> torch.Tensor:
    return torch.from_numpy(random_inputs(spec, n))


def targets(spec: DataSpec, n: int) -> torch.Tensor:
    return torch.from_numpy(random_targets(spec, n))


def loader(spec: DataSpec, n: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(inputs(spec, n), targets(spec, n)), batch_size=8)


def make(family: str, kind: str, **optim) -> L.LightningModule:
    return build_model(family, SPECS[kind], ARCH[family], {"max_epochs": 3, **optim})


def case_id(case: tuple[str, str]) -> str:
    return "-".join(case)


# ---------------------------------------------------------------- build, forward, backward


@pytest.mark.parametrize(("family", "kind"), CASES, ids=map(case_id, CASES))
def test_forward_shape_and_gradients(family: str, kind: str) -> None:
    torch.manual_seed(0)
    model = make(family, kind)
    spec = SPECS[kind]
    assert model.example_input_array.shape[0] == 2
    if family == "gan":
        out = model(torch.randn(4, ARCH["gan"]["latent_dim"]))
        assert out.shape == (4, *spec.input_shape)
        loss = model.discriminator(model.to_unit(out)).mean()  # reaches both nets
    else:
        out = model(inputs(spec, 4))
        assert out.shape == (4, spec.num_outputs)
        loss = out.pow(2).mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize(("family", "kind"), CASES, ids=map(case_id, CASES))
def test_export_net_runs_on_its_example(family: str, kind: str) -> None:
    model = make(family, kind).eval()
    net, example = model.export_net()
    assert isinstance(net, torch.nn.Module) and not net.training  # exporters restore this mode afterwards
    with torch.no_grad():
        torch.testing.assert_close(net(example), model(example))


@pytest.mark.parametrize(("family", "kind"), REJECTED, ids=map(case_id, REJECTED))
def test_rejected_kind_raises_one_line_input_error(family: str, kind: str) -> None:
    with pytest.raises(InputError, match=f"model.family={family} needs .* but builtin:x is {kind}; use ") as err:
        build_model(family, SPECS[kind], ARCH[family], {}, source="builtin:x")
    assert "\n" not in str(err.value)


def test_gan_needs_no_labels_and_takes_any_image_size() -> None:
    spec = tiny_spec("image", task="regression", input_shape=(3, 10, 6), num_outputs=1, mean=(0.0,) * 3, std=(1.0,) * 3)
    model = build_model("gan", spec, ARCH["gan"], {})
    assert model(torch.randn(2, 8)).shape == (2, 3, 10, 6)


@pytest.mark.parametrize(
    ("family", "arch", "optim", "message"),
    [
        ("nope", {}, {}, "model.family=nope is unknown"),
        ("transformer", {**ARCH["transformer"], "nhead": 3}, {}, "nhead=3 must divide"),
        ("rnn", {**ARCH["rnn"], "cell": "tree"}, {}, "model.rnn.cell=tree is unknown"),
        ("mlp", ARCH["mlp"], {"learning_rate": 1.0}, "unknown optim setting"),
        ("mlp", ARCH["mlp"], {"name": "sgd", "nesterov": True, "momentum": 0.0}, "nesterov=true needs"),
    ],
)
def test_bad_settings_raise_input_error(family: str, arch: dict, optim: dict, message: str) -> None:
    kind = "text" if family in ("transformer", "rnn") else "tabular"
    with pytest.raises(InputError, match=message):
        build_model(family, SPECS[kind], arch, optim)


def test_monitor_for() -> None:
    assert monitor_for("cnn", "classification") == ("val/acc", "max")
    assert monitor_for("mlp", "regression") == ("val/mse", "min")
    assert monitor_for("gan", "classification") == (None, "min")


def test_standardize_lives_in_the_net_and_survives_zero_std() -> None:
    spec = dataclasses.replace(SPECS["tabular"], std=(2.0, 2.0, 0.0, 2.0, 2.0))
    model = build_model("mlp", spec, ARCH["mlp"], {})
    buffers = dict(model.net.named_buffers())
    assert torch.equal(buffers["norm.mean"], torch.ones(5))
    assert torch.equal(buffers["norm.std"], torch.tensor([2.0, 2.0, 1.0, 2.0, 2.0]))


@pytest.mark.parametrize("kind", ["tabular", "sequence"])  # classification and regression
def test_epoch_metrics_weight_every_example_equally(kind: str) -> None:
    """val/loss, val/acc (or mse) over uneven batches (5 + 2) equal the metrics of all 7 examples at once."""
    spec = SPECS[kind]
    model = build_model("mlp" if kind == "tabular" else "rnn", spec, ARCH["mlp" if kind == "tabular" else "rnn"], {})
    x, y = inputs(spec, 7), targets(spec, 7)
    metrics = L.Trainer(**TRAINER).validate(model, DataLoader(TensorDataset(x, y), batch_size=5), verbose=False)[0]
    model.eval()
    with torch.no_grad():
        out = model(x)
    if spec.task == "classification":
        expected = {"val/loss": F.cross_entropy(out, y), "val/acc": (out.argmax(1) == y).float().mean()}
    else:
        expected = {"val/loss": F.mse_loss(out.squeeze(1), y), "val/mse": F.mse_loss(out.squeeze(1), y)}
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value), rel=1e-5), key


# ---------------------------------------------------------------- fit, test, checkpoint


@pytest.fixture(scope="module", params=CASES, ids=map(case_id, CASES))
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One fast_dev_run fit + test per case, its checkpoint, and the test-stage metrics."""
    family, kind = request.param
    torch.manual_seed(0)
    model = make(family, kind)
    trainer = L.Trainer(fast_dev_run=True, default_root_dir=tmp_path_factory.mktemp("fit"), **TRAINER)
    trainer.fit(model, loader(SPECS[kind]), loader(SPECS[kind]))
    val_metrics = dict(trainer.callback_metrics)
    trainer.test(model, loader(SPECS[kind]), verbose=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return family, kind, model, path, val_metrics, dict(trainer.callback_metrics)


def test_fit_and_test_log_stage_metrics(fitted) -> None:
    family, kind, _, _, val_metrics, test_metrics = fitted
    task = SPECS[kind].task
    if family == "gan":
        expected_val = {"train/d_loss", "train/g_loss", "val/d_loss", "val/g_loss", "val/d_acc"}
        expected_test = {"test/d_loss", "test/g_loss"}
    elif task == "classification":
        names = ("acc", "precision", "recall", "f1", "auroc")
        expected_val = {"train/loss", "train/acc", "val/loss", *(f"val/{n}" for n in names)}
        expected_test = {"test/loss", *(f"test/{n}" for n in names)}
    else:
        expected_val = {"train/loss", "train/mse", "val/loss", "val/mse", "val/mae", "val/r2"}
        expected_test = {"test/loss", "test/mse", "test/mae", "test/r2"}
    assert expected_val <= set(val_metrics), sorted(val_metrics)
    assert expected_test <= set(test_metrics), sorted(test_metrics)
    assert not any(name.endswith("log_loss") for name in {*val_metrics, *test_metrics})  # it is val/test loss
    monitor, _ = monitor_for(family, task)
    assert monitor is None or monitor in val_metrics
    assert all(torch.isfinite(v) for k, v in val_metrics.items() if "loss" in k)


def test_checkpoint_round_trip_with_weights_only(fitted) -> None:
    family, kind, model, path, _, _ = fitted
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain hparams: no pickled classes
    assert raw["hyper_parameters"]["data"] == SPECS[kind].to_dict()
    loaded = load_model(str(path))
    assert type(loaded) is type(model) and not loaded.training
    x = torch.randn(3, ARCH["gan"]["latent_dim"]) if family == "gan" else inputs(SPECS[kind], 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


# ---------------------------------------------------------------- optimizers, schedules, regularizers


@pytest.mark.parametrize("scheduler", ["none", "step", "exponential", "cosine", "plateau"])
@pytest.mark.parametrize("warmup", [0, 2])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_and_schedule_steps(name: str, scheduler: str, warmup: int) -> None:
    lr, epochs = 0.1, 6
    model = make(
        "mlp", "tabular", name=name, lr=lr, scheduler=scheduler, warmup_epochs=warmup, step_size=1, max_epochs=epochs
    )
    config = model.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    schedule = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
    assert (schedule is None) == (scheduler == "none" and warmup == 0)
    before = next(model.parameters()).detach().clone()
    lrs = []  # the lr each epoch trains with
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        model(inputs(SPECS["tabular"], 4)).pow(2).mean().backward()
        optimizer.step()
        if schedule is not None:  # Lightning steps epoch schedules after each epoch; plateau gets val/loss
            schedule.step(1.0) if scheduler == "plateau" else schedule.step()
    assert not torch.equal(before, next(model.parameters()))
    assert all(0 < value <= lr * (1 + 1e-9) for value in lrs), lrs
    if warmup:
        assert lrs[0] < lrs[1] < lrs[warmup] == pytest.approx(lr), lrs  # linear ramp up to the base lr
    if scheduler != "none":
        assert lrs[-1] < lr, lrs  # decayed by the end (plateau: the metric never improves)


def test_l1_penalty_adds_to_the_training_loss() -> None:
    torch.manual_seed(0)
    plain, sparse = make("mlp", "tabular"), make("mlp", "tabular", l1=0.01)
    sparse.load_state_dict(plain.state_dict())
    batch = (inputs(SPECS["tabular"], 8), targets(SPECS["tabular"], 8))
    plain.eval(), sparse.eval()  # same dropout/batch-norm behaviour for both
    weights = sum(p.abs().sum() for n, p in plain.named_parameters() if p.dim() > 1)
    difference = sparse.training_step(batch, 0) - plain.training_step(batch, 0)
    torch.testing.assert_close(difference, 0.01 * weights)


def test_apply_hyperparameters_updates_live_optimizer_and_dropout(tmp_path) -> None:
    model = make("mlp", "tabular", name="sgd", lr=0.1, momentum=0.9)
    trainer = L.Trainer(fast_dev_run=True, default_root_dir=tmp_path, **TRAINER)
    trainer.fit(model, loader(SPECS["tabular"]))
    model.apply_hyperparameters({"lr": 0.02, "weight_decay": 0.3, "momentum": 0.5, "l1": 0.1}, dropout=0.4)
    group = trainer.optimizers[0].param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.02, 0.3, 0.5)
    assert model.optim_cfg["l1"] == 0.1 and model.hparams["optim"]["lr"] == 0.02
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.4}


class RecordLR(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        group = trainer.optimizers[0].param_groups[0]
        self.seen = (group["lr"], group["weight_decay"])


def test_apply_hyperparameters_wins_over_restored_checkpoint(tmp_path) -> None:
    """The PBT case (ray#36660): a resumed fit must not bring back the checkpoint's lr and weight decay."""
    optim = {"name": "adam", "lr": 0.1, "weight_decay": 0.0}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, default_root_dir=tmp_path, **TRAINER)
    trainer.fit(make("mlp", "tabular", **optim), loader(SPECS["tabular"]))
    trainer.save_checkpoint(tmp_path / "old.ckpt")

    model = make("mlp", "tabular", **optim)
    model.apply_hyperparameters({"lr": 0.003, "weight_decay": 0.01})
    record = RecordLR()
    resumed = L.Trainer(max_epochs=2, limit_train_batches=1, callbacks=[record], **TRAINER)
    resumed.fit(model, loader(SPECS["tabular"]), ckpt_path=tmp_path / "old.ckpt")
    assert record.seen == pytest.approx((0.003, 0.01))


def test_rescaled_lr_keeps_the_schedule_position() -> None:
    model = make("mlp", "tabular", lr=0.1, warmup_epochs=3)
    config = model.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    schedule.step()  # warmup epoch 1 of 3: lr = 0.1 · 2/4
    rescale_lr(optimizer, [schedule], 0.02)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 2 / 4)
    for _ in range(3):
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


# ---------------------------------------------------------------- GAN extras


def test_gan_sample_is_seeded_and_grid_callback_writes_png(tmp_path) -> None:
    torch.manual_seed(0)
    model = make("gan", "image", lr=0.01, scheduler="step", step_size=1)
    assert isinstance(model, GANModule)
    first, again, other = model.sample(5, seed=1), model.sample(5, seed=1), model.sample(5, seed=2)
    assert first.shape == (5, 1, 8, 8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    grid = SampleGridCallback(tmp_path, every_n_epochs=1)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=0, callbacks=[grid], **TRAINER)
    trainer.fit(model, DataLoader(TensorDataset(inputs(SPECS["image"], 8)), batch_size=8))
    assert [p.split("/")[-1] for p in grid.paths] == ["epoch_000.png", "epoch_001.png"]
    # manual optimization: the module steps both lr schedules itself, once per epoch
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == pytest.approx([0.0025, 0.0025])
    assert all((tmp_path / "samples" / name).stat().st_size > 0 for name in ("epoch_000.png", "epoch_001.png"))
