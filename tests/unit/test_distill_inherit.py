"""Weight inheritance (dl_lightning.inherit): a shrunk student starts from its teacher's slices."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dl_lightning.distill import DistillModule
from dl_lightning.inherit import inherit, ranked, take
from dl_lightning.nets.cnn import CNNNet
from dl_lightning.nets.mlp import MLPNet
from dl_lightning.nets.rnn import RNNNet
from dl_lightning.nets.transformer import TransformerNet
from dl_lightning.registry import build_model
from tests.fixtures import tiny_spec


def _data(kind: str, shape: tuple[int, ...]) -> dict:
    channels = shape[0] if kind == "image" else shape[-1]
    return {
        "kind": kind,
        "input_shape": list(shape),
        "num_outputs": 3,
        "mean": [0.5] * channels,
        "std": [2.0] * channels,
    }


def _mlp(width: float) -> MLPNet:
    return MLPNet(_data("tabular", (6,)), [int(16 * width), int(8 * width)], batch_norm=True, dropout=0.1)


def _cnn(width: float) -> CNNNet:
    data = _data("image", (2, 8, 8))
    return CNNNet(data, [int(8 * width), int(16 * width)], 3, batch_norm=True, hidden=int(12 * width), dropout=0.1)


def _rnn(cell: str):
    def make(width: float) -> RNNNet:
        return RNNNet(_data("sequence", (5, 3)), cell, int(12 * width), 2, True, 8, 0.1)

    return make


def _transformer(width: float) -> TransformerNet:
    return TransformerNet(_data("sequence", (5, 3)), int(16 * width), 4, 2, int(24 * width), 0.1)


NETS = {"mlp": _mlp, "cnn": _cnn, "lstm": _rnn("lstm"), "gru": _rnn("gru"), "transformer": _transformer}
INPUTS = {"mlp": (6,), "cnn": (2, 8, 8), "lstm": (5, 3), "gru": (5, 3), "transformer": (5, 3)}


def _teacher(name: str, width: float = 1.0):
    torch.manual_seed(0)
    net = NETS[name](width)
    net.train()
    with torch.no_grad():  # BatchNorm's running statistics move away from their (0, 1) start
        net(torch.randn(16, *INPUTS[name]) * 3 + 1)
    return net.eval()


@pytest.mark.parametrize("name", list(NETS))
def test_same_widths_make_an_exact_copy(name):
    teacher = _teacher(name)
    torch.manual_seed(1)
    student = NETS[name](1.0).eval()
    x = torch.randn(4, *INPUTS[name])
    assert not torch.equal(student(x), teacher(x))
    done = inherit(student, teacher)
    assert done.fresh == () and done.copied == len(student.state_dict())
    assert torch.allclose(student(x), teacher(x), atol=1e-6)  # ranked units sum in another order: float rounding


def test_mlp_and_cnn_half_width_copy_leading_slices_without_ranking():
    mlp_t, mlp_s = _teacher("mlp"), _mlp(0.5)
    assert inherit(mlp_s, mlp_t, by_importance=False).fresh == ()
    assert torch.equal(mlp_s.body[0].weight, mlp_t.body[0].weight[:8])  # first layer: all 6 inputs kept
    assert torch.equal(mlp_s.body[4].weight, mlp_t.body[4].weight[:4, :8])  # next layer reads the kept 8
    assert torch.equal(mlp_s.head.weight, mlp_t.head.weight[:, :4])
    cnn_t, cnn_s = _teacher("cnn"), _cnn(0.5)
    assert inherit(cnn_s, cnn_t, by_importance=False).fresh == ()
    conv_t, conv_s = cnn_t.features[1][0].weight, cnn_s.features[1][0].weight  # (16, 8, 3, 3) → (8, 4, 3, 3)
    assert torch.equal(conv_s, conv_t[:8, :4])
    bn_t, bn_s = cnn_t.features[0][1], cnn_s.features[0][1]
    assert torch.equal(bn_s.running_mean, bn_t.running_mean[:4]) and torch.equal(bn_s.running_var, bn_t.running_var[:4])
    assert bn_s.running_mean.abs().sum() > 0  # the statistics are the teacher's, not the (0, 1) start
    positions = cnn_t.head[1].in_features // 16  # flatten is channel-major: channel c owns a run of positions
    assert torch.equal(cnn_s.head[1].weight, cnn_t.head[1].weight[:6, : 8 * positions])


@pytest.mark.parametrize("name", list(NETS))
def test_ranking_reorders_units_without_changing_what_the_net_computes(name):
    teacher = _teacher(name)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    reordered = ranked(teacher)
    x = torch.randn(8, *INPUTS[name])
    assert torch.allclose(reordered(x), teacher(x), atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # the teacher is not touched
    moved = any(not torch.equal(v, before[k]) for k, v in reordered.state_dict().items())
    assert moved == (name in ("mlp", "cnn"))  # recurrent and attention nets keep first-k


def _top_half(importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The more important half of the units, most important first, and the rest."""
    order = importance.argsort(descending=True)
    keep, drop = order[: len(order) // 2], order[len(order) // 2 :]
    assert importance[keep].min() >= importance[drop].max()
    return keep, drop


def test_half_width_mlp_keeps_its_most_important_units_and_computes_the_pruned_teacher():
    teacher, student = _teacher("mlp"), _mlp(0.5).eval()  # 6 → 16 → 8 → 3, BatchNorm after each hidden layer
    with torch.no_grad():
        for bn in (teacher.body[1], teacher.body[5]):
            bn.weight.copy_(torch.randn(len(bn.weight)))  # gammas in no particular order, some negative
    assert inherit(student, teacher).fresh == ()
    w0, w1, head = teacher.body[0].weight, teacher.body[4].weight, teacher.head.weight
    keep0, drop0 = _top_half(teacher.body[1].weight.abs() * w1.norm(dim=0))  # |gamma| × outgoing norm
    keep1, drop1 = _top_half(teacher.body[5].weight.abs() * head.norm(dim=0))
    assert torch.equal(student.body[0].weight, w0[keep0])
    assert torch.equal(student.body[1].running_mean, teacher.body[1].running_mean[keep0])
    assert torch.equal(student.body[4].weight, w1[keep1][:, keep0])  # reads the kept units, in their new order
    assert torch.equal(student.head.weight, head[:, keep1])
    pruned = _mlp(1.0).eval()
    pruned.load_state_dict(teacher.state_dict())
    with torch.no_grad():  # the other units send nothing on
        pruned.body[4].weight[:, drop0] = 0.0
        pruned.head.weight[:, drop1] = 0.0
    x = torch.randn(16, 6)
    assert torch.allclose(student(x), pruned(x), atol=1e-5)
    assert not torch.allclose(student(x), teacher(x), atol=1e-3)


def test_layers_without_batch_norm_keep_their_first_units():
    torch.manual_seed(0)
    teacher = MLPNet(_data("tabular", (6,)), [16, 8], batch_norm=False, dropout=0.0)
    assert all(torch.equal(a, b) for a, b in zip(ranked(teacher).parameters(), teacher.parameters(), strict=True))
    student = MLPNet(_data("tabular", (6,)), [8, 4], batch_norm=False, dropout=0.0)
    inherit(student, teacher)
    assert torch.equal(student.body[3].weight, teacher.body[3].weight[:4, :8])


def test_half_width_cnn_keeps_the_channels_with_the_largest_gamma_times_outgoing_weights():
    teacher, student = _teacher("cnn"), _cnn(0.5)  # conv 8 → 16 channels, then a flattened head
    with torch.no_grad():
        teacher.features[0][1].weight.copy_(
            torch.linspace(0.1, 2.0, 8)
        )  # |gamma| rises: the first-k order is the worst
    assert inherit(student, teacher).fresh == ()
    conv0, bn0 = teacher.features[0][:2]
    conv1, bn1 = teacher.features[1][:2]
    fc = teacher.head[1].weight.unflatten(1, (16, -1))  # (hidden, channel, grid position)
    keep0, _ = _top_half(bn0.weight.abs() * conv1.weight.transpose(0, 1).flatten(1).norm(dim=1))
    keep1, _ = _top_half(bn1.weight.abs() * fc.transpose(0, 1).flatten(1).norm(dim=1))
    assert not torch.equal(keep0.sort().values, torch.arange(4))
    assert torch.equal(student.features[0][0].weight, conv0.weight[keep0])
    assert torch.equal(student.features[0][1].running_var, bn0.running_var[keep0])
    assert torch.equal(student.features[1][0].weight, conv1.weight[keep1][:, keep0])
    # channels move with their grid positions; the hidden layer (no BatchNorm) keeps its first units
    assert torch.equal(student.head[1].weight, fc[:6][:, keep1].flatten(1))
    assert torch.equal(student.head[4].weight, teacher.head[4].weight[:, :6])


@pytest.mark.parametrize(("cell", "gates"), [("lstm", 4), ("gru", 3)])
def test_recurrent_half_width_slices_each_gate_and_direction(cell, gates):
    teacher, student = _teacher(cell), _rnn(cell)(0.5)
    assert inherit(student, teacher).fresh == ()
    t, s = teacher.rnn, student.rnn
    assert torch.equal(s.weight_hh_l0, t.weight_hh_l0.view(gates, 12, 12)[:, :6, :6].reshape(gates * 6, 6))
    assert torch.equal(s.bias_ih_l1_reverse, t.bias_ih_l1_reverse.view(gates, 12)[:, :6].reshape(-1))
    upper = t.weight_ih_l1.view(gates, 12, 2, 12)[:, :6, :, :6]  # reads [forward 12, backward 12]
    assert torch.equal(s.weight_ih_l1, upper.reshape(gates * 6, 12))
    assert torch.equal(s.weight_ih_l0, t.weight_ih_l0.view(gates, 12, 3)[:, :6].reshape(gates * 6, 3))
    head = teacher.head.weight.view(3, 2, 12)[:, :, :6]  # the head reads both directions too
    assert torch.equal(student.head.weight, head.reshape(3, 12))


def test_transformer_half_width_slices_per_projection_and_head():
    teacher, student = _teacher("transformer"), _transformer(0.5)  # d 16 → 8, 4 heads: head_dim 4 → 2
    assert inherit(student, teacher).fresh == ()
    t, s = teacher.encoder.layers[1].self_attn, student.encoder.layers[1].self_attn
    rows = t.in_proj_weight.view(3, 4, 4, 16)[:, :, :2, :8]  # q/k/v, head, head_dim, d_model
    assert torch.equal(s.in_proj_weight, rows.reshape(24, 8))
    assert torch.equal(s.in_proj_bias, t.in_proj_bias.view(3, 4, 4)[:, :, :2].reshape(-1))
    assert torch.equal(s.out_proj.weight, t.out_proj.weight.view(16, 4, 4)[:8, :, :2].reshape(8, 8))
    ff = teacher.encoder.layers[0].linear1.weight[:12, :8]
    assert torch.equal(student.encoder.layers[0].linear1.weight, ff)


def test_what_cannot_be_sliced_stays_fresh_and_is_named():
    assert take(torch.ones(4, 4), torch.Size([4]), (1,)) is None  # another rank
    assert take(torch.ones(4), torch.Size([6]), (1,)) is None  # wider than the teacher
    assert take(torch.ones(12), torch.Size([5]), (3,)) is None  # 3 gates do not divide 5
    teacher, student = _teacher("mlp", 0.5), _mlp(1.0)  # a student wider than its teacher
    start = {k: v.clone() for k, v in student.state_dict().items()}
    done = inherit(student, teacher)
    assert "body.0.weight" in done.fresh and torch.equal(student.body[0].weight, start["body.0.weight"])
    assert "fresh: " in done.summary()


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes by the signs of two projections of 10 features: nonlinear, learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3:6].sum(1) * x[:, 6] > 0).long()
    return x, y


def _fit(module: L.LightningModule, x: torch.Tensor, y: torch.Tensor, epochs: int, tmp_path) -> None:
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))


def test_an_inherited_distilled_student_beats_its_scratch_twin_early(tmp_path, one_thread):
    spec = tiny_spec("tabular", input_shape=(10,), standardized=True)
    x, y = _task(1000, 0)
    test_x, test_y = _task(500, 1)
    L.seed_everything(0, verbose=False)
    teacher = build_model("mlp", spec, {"hidden": [128, 64], "dropout": 0.0}, {})
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(100):  # a plain full-batch loop: the teacher only has to be good, not trained our way
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(teacher(x), y).backward()
        optimizer.step()

    def accuracy(module) -> float:
        with torch.no_grad():
            return float((module.eval()(test_x).argmax(1) == test_y).float().mean())

    def student(inherited: bool) -> float:
        L.seed_everything(1, verbose=False)
        module = build_model("mlp", spec, {"hidden": [64, 32], "dropout": 0.0}, {"lr": 1e-3})
        if inherited:
            inherit(module.net, teacher.net)
        _fit(DistillModule(module, teacher.net if inherited else None, "classification", 0.5, 2.0), x, y, 1, tmp_path)
        return accuracy(module)

    chance = float(torch.bincount(test_y).max()) / len(test_y)
    assert accuracy(teacher) > chance + 0.2
    distilled, scratch = student(True), student(False)
    assert distilled > scratch + 0.03, (distilled, scratch)


def test_compress_student_inherits_only_from_a_teacher_of_its_family(capsys):
    from pipelines.compression.students import inherit_teacher
    from pipelines.compression.teacher import Teacher
    from pipelines.config import load_config

    assert load_config(None, []).compress.inherit is True  # on unless turned off
    spec = tiny_spec("tabular", input_shape=(6,), standardized=True)
    torch.manual_seed(0)
    teacher = Teacher(build_model("mlp", spec, {"hidden": [16, 8]}, {}), "t.ckpt", "mlp", spec, {}, None)
    student = build_model("mlp", spec, {"hidden": [8, 4]}, {})
    inherit_teacher(student, teacher, "mlp")
    assert torch.equal(student.net.body[3].weight, ranked(teacher.module.net).body[3].weight[:4, :8])
    assert (
        student.inherited == "8 of 8 tensors inherited" and "inherits its teacher's weights" in capsys.readouterr().out
    )
    other = build_model("mlp", spec, {"hidden": [8, 4]}, {})
    before = other.net.body[0].weight.clone()
    inherit_teacher(other, teacher, "cnn")  # a student of another family shares no names with its teacher
    assert torch.equal(other.net.body[0].weight, before) and not hasattr(other, "inherited")
