"""Bad input: one line on stderr naming the file/line/key, exit code 2, no traceback."""

import sys

import pytest
from conftest import toy_config, toy_pairs, write_aligned, write_config


@pytest.fixture
def toy_root(tmp_path):
    src, tgt = toy_pairs(50)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:5], tgt[:5])
    return tmp_path


def _case(tmp, name):
    """Build one bad-input case; returns (argv, expected message fragment)."""
    data = tmp / "data"
    cfg = toy_config(tmp / "run")
    good = write_config(tmp / "good.yaml", cfg)
    if name == "unknown_key":
        cfg["model"]["hiden_size"] = 3
        return ["prepare", write_config(tmp / "c.yaml", cfg)], "unknown key model.hiden_size"
    if name == "wrong_type":
        cfg["train"]["epochs"] = "ten"
        return ["prepare", write_config(tmp / "c.yaml", cfg)], "train.epochs='ten' has the wrong type"
    if name == "out_of_range":
        return ["prepare", good, "--set", "model.dropout=2"], "model.dropout=2.0 is out of range"
    if name == "bad_override":
        return ["prepare", good, "--set", "nonsense"], "expected section.key=value"
    if name == "missing_config":
        return ["prepare", tmp / "nope.yaml"], "config file not found"
    if name == "invalid_yaml":
        (tmp / "bad.yaml").write_text("data: [\n", encoding="utf-8")
        return ["prepare", tmp / "bad.yaml"], "bad.yaml:"
    if name == "mismatched_lines":
        (data / "toy" / "train.yy").write_text("only one line\n", encoding="utf-8")
        return ["prepare", good], "train.xx has 50 lines but"
    if name == "invalid_utf8":
        raw = (data / "toy" / "train.xx").read_bytes().split(b"\n")
        raw[6] = b"caf\xe9"
        (data / "toy" / "train.xx").write_bytes(b"\n".join(raw))
        return ["prepare", good], "train.xx:7: invalid UTF-8"
    if name == "missing_corpus":
        cfg["data"]["train"] = "toy/absent"
        return ["prepare", write_config(tmp / "c.yaml", cfg)], "absent.xx: file not found"
    if name == "empty_corpus":
        (data / "toy" / "train.xx").write_text("\n" * 50, encoding="utf-8")
        return ["prepare", good], "no usable sentence pairs"
    if name == "missing_data_root":
        return ["train", good, "--data-root", tmp / "no-such-root"], "data root not found"
    if name == "not_a_run_dir":
        return ["translate", tmp / "nothing", "hello"], "not a run dir"
    if name == "bad_flag_value":
        return ["translate", tmp, "hi", "--beam-size", "0"], "--beam-size must be >= 1"
    if name == "unknown_subcommand":
        return ["trian", good], "invalid choice: 'trian'"
    if name == "evaluate_src_without_ref":
        return ["evaluate", tmp, "--src", good], "--src and --ref go together"
    if name == "nan_flag":
        return ["translate", tmp, "hi", "--length-penalty", "nan"], "argument --length-penalty: 'nan' is not a finite"
    if name == "inf_flag":
        return ["evaluate", tmp, "--length-penalty", "inf"], "argument --length-penalty: 'inf' is not a finite"
    if name == "nan_config_value":
        return ["prepare", good, "--set", "train.label_smoothing=nan"], "train.label_smoothing=nan is not a finite"
    if name == "inf_yaml_value":
        cfg["decode"]["max_ratio"] = float("inf")
        return ["prepare", write_config(tmp / "c.yaml", cfg)], "decode.max_ratio=inf is not a finite"
    if name == "empty_run_dir":
        return ["prepare", good, "--set", "run_dir="], "run_dir='' is not valid"
    if name == "vocab_too_small":  # SentencePiece's RuntimeError at prepare
        return ["prepare", good, "--set", "tokenizer.vocab_size=10"], "tokenizer.vocab_size=10 is too small"
    if name == "no_pair_within_max_len":  # every pair dropped by the length filter
        src, tgt = toy_pairs(50, min_words=4)
        write_aligned(data / "toy", "train", src, tgt)
        return (["train", good, "--set", "train.max_len=2", "--set", "train.batch_tokens=64"],
                "train: all 50 training pairs are longer than train.max_len=2 subwords")
    if name == "unknown_precision":
        return (["train", good, "--set", "train.mixed_precision=float32"],
                "train.mixed_precision='float32' has the wrong type; expected bool or one of "
                "'float16', 'bfloat16'")
    if name == "input_file_missing":
        return ["translate", tmp, "--input", tmp / "absent.txt"], "absent.txt: cannot read"
    raise AssertionError(name)


CASES = ["unknown_key", "wrong_type", "out_of_range", "bad_override", "missing_config",
         "invalid_yaml", "mismatched_lines", "invalid_utf8", "missing_corpus", "empty_corpus",
         "missing_data_root", "not_a_run_dir", "bad_flag_value", "unknown_subcommand",
         "evaluate_src_without_ref", "input_file_missing", "nan_flag", "inf_flag",
         "nan_config_value", "inf_yaml_value", "empty_run_dir", "vocab_too_small",
         "no_pair_within_max_len", "unknown_precision"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_line_and_exit_2(name, toy_root, run_cli, monkeypatch):
    monkeypatch.chdir(toy_root)  # a command that wrongly succeeds writes nothing in the repo
    argv, fragment = _case(toy_root, name)
    if "--data-root" not in [str(a) for a in argv] and argv[0] in ("prepare", "train"):
        argv += ["--data-root", toy_root / "data"]
    code, out, err = run_cli(*argv)
    lines = [line for line in err.splitlines() if line.startswith("translator")]
    assert code == 2
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


def test_invalid_utf8_on_stdin(toy_root, run_cli, monkeypatch, memorized_run):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\xfe\n")))
    code, out, err = run_cli("translate", memorized_run["run_dir"])
    assert code == 2 and "<stdin>:2: invalid UTF-8" in err and out == ""


def test_prepare_prints_drop_table(toy_root, run_cli):
    cfg = write_config(toy_root / "c.yaml", toy_config(toy_root / "run"))
    code, out, err = run_cli("prepare", cfg, "--data-root", toy_root / "data")
    assert code == 0
    for row in ("pairs read", "dropped: empty", "dropped: too_long", "dropped: ratio",
                "dropped: duplicate", "train pairs", "dev unk rate"):
        assert row in out
