import pytest

from translator.config import ConfigError, config_from_dict, dump_config, load_config

BASE = {"data": {"train": "x/train"}}


def test_defaults_and_yaml_values():
    cfg = config_from_dict({"data": {"train": "x/train"}, "model": {"hidden_size": 128}})
    assert cfg.model.hidden_size == 128
    assert cfg.model.embed_dim == 256  # default
    assert cfg.train.batch_tokens == 4096


def test_overrides_are_typed_and_win():
    cfg = config_from_dict(
        {"data": {"train": "x/train"}, "train": {"epochs": 3}},
        ["train.epochs=7", "train.learning_rate=2e-3", "model.input_feeding=false",
         "run_dir=runs/x", "data.max_pairs=null"],
    )
    assert cfg.train.epochs == 7
    assert cfg.train.learning_rate == pytest.approx(2e-3)
    assert cfg.model.input_feeding is False
    assert cfg.run_dir == "runs/x"
    assert cfg.data.max_pairs is None


def test_int_is_accepted_for_float_but_not_bool_for_int():
    cfg = config_from_dict({**BASE, "train": {"learning_rate": 1}})
    assert isinstance(cfg.train.learning_rate, float)
    with pytest.raises(ConfigError, match="train.epochs"):
        config_from_dict({**BASE, "train": {"epochs": True}})


@pytest.mark.parametrize(
    "raw, overrides, pattern",
    [
        ({**BASE, "model": {"hiden_size": 3}}, [], r"unknown key model\.hiden_size; valid keys of model: .*hidden_size"),
        ({**BASE, "modle": {}}, [], r"unknown key modle; valid top-level keys"),
        ({**BASE, "model": {"hidden_size": "big"}}, [], r"model\.hidden_size='big' has the wrong type; expected int"),
        ({**BASE, "model": {"dropout": 1.5}}, [], r"model\.dropout=1\.5 is out of range; allowed: \[0\.0, 0\.95\]"),
        ({**BASE, "model": {"attention": "cosine"}}, [], r"model\.attention='cosine' is not allowed; expected one of 'bahdanau'"),
        ({**BASE, "model": {"hidden_size": 7}}, [], r"model\.hidden_size=7 must be even"),
        ({**BASE, "decode": {"n_best": 5, "beam_size": 2}}, [], r"decode\.n_best=5 is larger than decode\.beam_size=2"),
        ({**BASE, "train": {"learning_rate": 0}}, [], r"train\.learning_rate=0\.0 is out of range; allowed: \(0\.0"),
        ({"model": {}}, [], r"data\.train is missing"),
        (BASE, ["train.epochs"], r"expected section\.key=value"),
        (BASE, ["trian.epochs=3"], r"unknown section 'trian'"),
        (BASE, ["train.epochz=3"], r"unknown key train\.epochz"),
        (BASE, ["train.epochs=three"], r"train\.epochs='three' has the wrong type"),
        ({**BASE, "model": [1, 2]}, [], r"model must be a mapping"),
        # NaN passes every range comparison and Inf every lower bound
        ({**BASE, "decode": {"length_penalty": float("nan")}}, [], r"decode\.length_penalty=nan is not a finite number"),
        ({**BASE, "decode": {"max_ratio": float("inf")}}, [], r"decode\.max_ratio=inf is not a finite number"),
        (BASE, ["train.learning_rate=nan"], r"train\.learning_rate=nan is not a finite number"),
        (BASE, ["train.clip_norm=.inf"], r"train\.clip_norm=inf is not a finite number"),
        (BASE, ["model.dropout=-.inf"], r"model\.dropout=-inf is not a finite number"),
        (BASE, ["run_dir="], r"run_dir='' is not valid: expected a directory"),
        ({**BASE, "run_dir": " "}, [], r"run_dir=' ' is not valid"),
    ],
)
def test_bad_configs_name_the_key(raw, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(raw, overrides)


def test_load_config_roundtrip_and_file_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: a/b\nmodel:\n  hidden_size: 64\n", encoding="utf-8")
    cfg = load_config(path)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(again) == cfg
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+"):
        load_config(bad)


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_config(path)


def test_mixed_precision_has_one_spelling_per_setting():
    """``true`` is float16: a run trained with one spelling resumes with the other."""
    read = [config_from_dict(BASE, [f"train.mixed_precision={v}"]).train.mixed_precision
            for v in ("true", "float16", "bfloat16", "false")]
    assert read == ["float16", "float16", "bfloat16", False]
    with pytest.raises(ConfigError, match="train.mixed_precision='bf16' has the wrong type"):
        config_from_dict(BASE, ["train.mixed_precision=bf16"])
