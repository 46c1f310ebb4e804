"""model.init_from, model.freeze / trainer.unfreeze_at_epoch, optim.backbone_lr_scale and lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from dl_lightning.errors import InputError
from dl_lightning.modules.base import FAMILY_KEY
from dl_lightning.registry import build_model
from dl_lightning.transfer import FreezeParameters, match_prefixes
from pipelines import finetune
from pipelines.config import load_config
from pipelines.train import load_data, optim_settings, train

ARCH = ["model.family=mlp", "model.mlp.hidden=[16,8]", "model.dropout=0.0"]


def npz(path: Path, classes: int, features: int = 6, n: int = 90) -> str:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, features)).astype(np.float32) + y[:, None].astype(np.float32)
    np.savez(path, x=x, y=y)
    return str(path)


def config(tmp_path: Path, source: str, *extra: str):
    base = [f"data.source={source}", f"output_dir={tmp_path / 'out'}", "tracking.enabled=false", "data.batch_size=16"]
    return load_config(None, [*base, *ARCH, "trainer.max_epochs=1", *extra])


def module_for(cfg):
    splits = load_data(cfg)
    return build_model(cfg.model.family, splits.spec, cfg.model.arch(), optim_settings(cfg)), splits


def save_ckpt(path: Path, model, family: str = "mlp") -> str:
    torch.save({"state_dict": model.state_dict(), FAMILY_KEY: family}, path)
    return str(path)


@pytest.fixture
def earlier(tmp_path: Path) -> str:
    """A 3-class mlp checkpoint (untrained weights are enough to count tensors)."""
    model, _ = module_for(config(tmp_path, npz(tmp_path / "three.npz", 3)))
    return save_ckpt(tmp_path / "earlier.ckpt", model)


def test_partial_load_skips_the_head_when_classes_differ(tmp_path, earlier, capsys):
    cfg = config(tmp_path, npz(tmp_path / "four.npz", 4), f"model.init_from={earlier}")
    model, splits = module_for(cfg)
    saved = torch.load(earlier, weights_only=True)["state_dict"]
    extra = finetune.prepare(cfg, model, splits)["init_from"]
    assert (
        extra["skipped"] >= 2 and "net.head.weight" in extra["skipped_why"] and "net.head.bias" in extra["skipped_why"]
    )
    body = [k for k in saved if k.startswith("net.body") and k.endswith("weight")]
    assert body and all(torch.equal(model.state_dict()[k], saved[k]) for k in body)
    assert extra["loaded"] == len([k for k in model.state_dict() if k.startswith("net.body")])
    assert model.backbone_names and not any(n.startswith("net.head") for n in model.backbone_names)
    assert f"{extra['loaded']} tensors loaded, {extra['skipped']} skipped" in capsys.readouterr().out
    assert len(extra["dlforge.init_from.sha256"]) == 64


def test_family_mismatch_is_exit_2_naming_both_before_writing(tmp_path, earlier, cli):
    model, _ = module_for(config(tmp_path, npz(tmp_path / "three.npz", 3)))
    as_cnn = save_ckpt(tmp_path / "cnn.ckpt", model, family="cnn")
    out = tmp_path / "never"
    code, _, err = cli(
        "train",
        *ARCH,
        f"data.source={tmp_path / 'three.npz'}",
        f"model.init_from={as_cnn}",
        f"output_dir={out}",
        "tracking.enabled=false",
    )
    assert code == 2 and "cnn" in err and "model.family=mlp" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_nothing_matching_is_an_error(tmp_path, earlier, cli):
    src = npz(tmp_path / "wide.npz", 4, features=9)  # no shape alike, not even the head bias
    code, _, err = cli(
        "train",
        "model.family=mlp",
        "model.mlp.hidden=[5]",
        f"data.source={src}",
        f"model.init_from={earlier}",
        f"output_dir={tmp_path / 'o'}",
        "tracking.enabled=false",
    )
    assert code == 2 and "none of its" in err and not (tmp_path / "o").exists()


def test_bad_references_are_one_line(tmp_path, cli):
    src = npz(tmp_path / "d.npz", 3)
    for ref, words in [("nope.ckpt", "neither an existing file"), ("m.onnx", "ONNX file")]:
        code, _, err = cli(
            "train",
            *ARCH,
            f"data.source={src}",
            f"model.init_from={ref}",
            "tracking.enabled=false",
            f"output_dir={tmp_path / 'o'}",
        )
        assert code == 2 and words in err


def test_freeze_prefix_matching_nothing_names_the_closest(tmp_path):
    model, _ = module_for(config(tmp_path, npz(tmp_path / "d.npz", 3)))
    with pytest.raises(InputError, match="closest: net.body"):
        match_prefixes(model, ["net.bdy"])
    assert match_prefixes(model, ["net.head"]) == ["net.head.weight", "net.head.bias"]


class Snapshots(Callback):
    def __init__(self) -> None:
        self.body: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.body.append(pl_module.net.body[0].weight.detach().clone())


def test_freeze_holds_weights_then_unfreeze_updates_them(tmp_path):
    cfg = config(
        tmp_path,
        npz(tmp_path / "d.npz", 3),
        "trainer.max_epochs=3",
        "model.freeze=[net.body]",
        "trainer.unfreeze_at_epoch=2",
        "trainer.limit_val_batches=1",
    )
    snaps = Snapshots()
    torch.manual_seed(cfg.seed)
    start = module_for(cfg)[0].net.body[0].weight.detach().clone()  # train() builds the same seeded weights
    train(cfg, callbacks=[snaps], test=False)
    assert torch.equal(snaps.body[0], start) and torch.equal(snaps.body[1], start)  # epochs 0 and 1: frozen
    assert not torch.equal(snaps.body[2], start)  # epoch 2: released


def test_freeze_callback_is_frozen_only_before_the_epoch():
    cb = FreezeParameters(["net"], unfreeze_at_epoch=2)
    assert cb.frozen_now(0) and cb.frozen_now(1) and not cb.frozen_now(2)
    assert FreezeParameters(["net"]).frozen_now(100)


def test_backbone_lr_scale_makes_two_param_groups(tmp_path, earlier):
    cfg = config(
        tmp_path,
        npz(tmp_path / "four.npz", 4),
        f"model.init_from={earlier}",
        "optim.lr=0.01",
        "optim.backbone_lr_scale=0.1",
    )
    model, splits = module_for(cfg)
    finetune.prepare(cfg, model, splits)
    optimizer = model.configure_optimizers()
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.001) and groups["head"]["lr"] == pytest.approx(0.01)
    head = {id(p) for p in groups["head"]["params"]}
    assert head == {id(model.net.head.weight), id(model.net.head.bias)}


def test_finetuning_keys_need_each_other(tmp_path, cli):
    src = npz(tmp_path / "d.npz", 3)
    base = [*ARCH, f"data.source={src}", "tracking.enabled=false", f"output_dir={tmp_path / 'o'}"]
    assert "set model.init_from" in cli("train", *base, "optim.backbone_lr_scale=0.5")[2]
    assert "set model.freeze" in cli("train", *base, "trainer.unfreeze_at_epoch=1", "trainer.max_epochs=3")[2]


def test_init_from_a_registered_model_records_lineage(tmp_path, store, cli):
    """Real sqlite store: train and register, fine-tune from models:/…@candidate, read the tags back."""
    from mlflow import MlflowClient

    three, four = npz(tmp_path / "three.npz", 3), npz(tmp_path / "four.npz", 4)
    common = [*ARCH, f"tracking.uri={store}", "trainer.max_epochs=1", "data.batch_size=32"]
    code, _, err = cli(
        "train", *common, f"data.source={three}", f"output_dir={tmp_path / 'a'}", "tracking.register=true"
    )
    assert code == 0, err
    code, out, err = cli(
        "train",
        *common,
        f"data.source={four}",
        f"output_dir={tmp_path / 'b'}",
        "model.init_from=models:/dlforge-mlp@candidate",
        "tracking.register=true",
    )
    assert code == 0, err
    assert "tensors loaded" in out and "init_from" in out
    client = MlflowClient(tracking_uri=store)
    v2 = client.get_model_version("dlforge-mlp", "2")
    tags = client.get_run(v2.run_id).data.tags
    v1 = client.get_model_version("dlforge-mlp", "1")
    assert tags["dlforge.init_from.run_id"] == v1.run_id
    assert tags["dlforge.init_from.model_version"] == "dlforge-mlp/1"
    assert len(tags["dlforge.init_from.sha256"]) == 64 and int(tags["dlforge.init_from.skipped"]) >= 2
    assert v2.tags["dlforge.init_from.run_id"] == v1.run_id


def test_onnx_only_version_is_refused_in_one_line(tmp_path, store):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    client.create_registered_model("dlforge-mlp-onnx")
    version = client.create_model_version(
        "dlforge-mlp-onnx", source=str(tmp_path), tags={"dlforge.quantization": "dynamic"}
    )
    client.set_registered_model_alias("dlforge-mlp-onnx", "int8", version.version)
    cfg = config(
        tmp_path,
        "builtin:digits",
        "model.init_from=models:/dlforge-mlp-onnx@int8",
        f"tracking.uri={store}",
        "tracking.enabled=true",
    )
    with pytest.raises(InputError, match="ONNX-only version") as info:
        finetune.resolve(cfg)
    assert "\n" not in str(info.value)


def test_head_stays_fresh_when_the_classes_differ(tmp_path):
    """Same number of classes, other names: the head fits in shape but would score other classes."""
    from dl_lightning.transfer import plan_load

    model, _ = module_for(config(tmp_path, npz(tmp_path / "d.npz", 3)))
    saved = model.state_dict()
    assert "net.head.weight" in plan_load(model, saved, ["0", "1", "2"]).loaded
    report = plan_load(model, saved, ["x", "y", "z"])
    assert report.skipped["net.head.weight"] == "head of other classes" and "net.body.0.weight" in report.loaded


def test_a_cnn_keeps_its_convolutions_and_drops_its_whole_head_for_other_classes(tmp_path):
    """The hidden head layer separated the old classes too: it stays fresh with the output layer."""
    from dl_lightning.transfer import plan_load

    model, _ = module_for(config(tmp_path, npz(tmp_path / "d.npz", 3, features=16), "model.family=cnn"))
    report = plan_load(model, model.state_dict(), ["x", "y", "z"])
    head = [name for name in model.state_dict() if name.startswith("net.head.")]
    assert len(head) == 4 and all(report.skipped[name] == "head of other classes" for name in head)
    assert any(name.startswith("net.features.") for name in report.loaded)
