import dataclasses

import pytest

from pipelines.config import Config, ConfigError, all_keys, build_config, load_config, parse_override

FIXED_KEYS = [
    "seed",
    "output_dir",
    "data.source",
    "data.target",
    "data.kind",
    "data.task",
    "model.family",
    "trainer.max_epochs",
    "trainer.devices",
    "trainer.strategy",
    "tracking.uri",
]


def test_fixed_key_names_exist():
    assert set(FIXED_KEYS) <= set(all_keys())


def test_defaults_need_no_file():
    cfg = load_config(None, [])
    assert cfg == Config()


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\noptim:\n  lr: 0.1\nmodel:\n  family: mlp\n")
    cfg = load_config(path, ["optim.lr=3e-4", "model.mlp.hidden=[8, 4]"])
    assert (cfg.seed, cfg.optim.lr, cfg.model.family, cfg.model.mlp.hidden) == (1, 3e-4, "mlp", (8, 4))


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().seed = 3  # type: ignore[misc]


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.family=rnn", "model.rnn.cell=gru", "optim.lr=0.01"])
    assert build_config(cfg.to_dict()) == cfg
    assert cfg.with_overrides({"optim.lr": 0.02}).optim.lr == 0.02
    assert cfg.optim.lr == 0.01  # the original is untouched


def test_ints_widen_to_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
        ("trainer.max_epoch=3", r"did you mean 'trainer.max_epochs'"),
        ("trainer.max_epochs=-1", r"trainer.max_epochs must be ≥ 1"),
        ("optim.lr=0", r"optim.lr must be > 0"),
        ("optim.lr=fast", r"optim.lr must be a number"),
        ("trainer.devices=two", r"trainer.devices must be an integer"),
        ("trainer.devices=1.5", r"trainer.devices must be an integer"),
        ("model.family=resnet", r"model.family=resnet is unknown; use one of mlp, cnn, rnn, transformer, gan"),
        ("tracking.enabled=maybe", r"tracking.enabled must be true or false"),
        ("model=3", r"model is a section"),
        ("model.cnn.channels=[a]", r"model.cnn.channels\[0\] must be an integer"),
        ("model.dropout=1.5", r"model.dropout must be ≤ 0.9"),
        ("nonsense", r"not key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line"):
        load_config(path)


def test_yaml_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_override_values_are_yaml_scalars():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=") == ("a", None)
    assert parse_override("data.source=builtin:digits") == ("data.source", "builtin:digits")
