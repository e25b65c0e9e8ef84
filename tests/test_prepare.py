"""Re-preparing a run dir: nothing of an earlier prepare survives, and no half state is accepted."""

import json
import os

import pytest
from conftest import toy_config, toy_pairs, write_aligned, write_config

from translator.config import load_config
from translator.prepare import RunPaths, prepare, read_prepared_split
from translator.tokenizer import Tokenizers


@pytest.fixture
def toy(tmp_path):
    """A corpus without dev/test files, and a config that splits 50 + 50 off it."""
    src, tgt = toy_pairs(300)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    cfg = toy_config(tmp_path / "run", data={"dev": None, "dev_size": 50, "test_size": 50})
    return {"root": tmp_path, "data": tmp_path / "data", "run": tmp_path / "run",
            "config": write_config(tmp_path / "c.yaml", cfg)}


def _state(run):
    """Every file under the run dir with its bytes, leaving out hidden temporary entries."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and not str(p.relative_to(run)).startswith(".")}


def test_reprepare_without_split_drops_the_old_dev_and_test(toy, run_cli):
    code, out, err = run_cli("prepare", toy["config"], "--data-root", toy["data"])
    assert code == 0, err
    assert sorted(os.listdir(toy["run"] / "corpus")) == [
        "dev.src", "dev.tgt", "test.src", "test.tgt", "train.src", "train.tgt"]
    code, out, err = run_cli("prepare", toy["config"], "--data-root", toy["data"],
                             "--set", "data.dev_size=0", "--set", "data.test_size=0")
    assert code == 0, err
    # the old dev/test (sentences the new train set contains) must not be left for train
    assert sorted(os.listdir(toy["run"] / "corpus")) == ["train.src", "train.tgt"]
    paths = RunPaths(toy["run"])
    assert read_prepared_split(paths, "dev") is None and read_prepared_split(paths, "test") is None
    assert len(read_prepared_split(paths, "train")) == 300
    assert json.loads(paths.stats.read_text())["pairs"] == {"train": 300, "dev": 0, "test": 0}
    assert not [p for p in os.listdir(toy["run"]) if p.startswith(".")]


def test_reprepare_joint_then_separate_keeps_only_the_separate_models(toy, run_cli):
    code, out, err = run_cli("prepare", toy["config"], "--data-root", toy["data"])
    assert code == 0, err
    assert sorted(p.name for p in toy["run"].glob("spm*")) == ["spm.model"]
    code, out, err = run_cli("prepare", toy["config"], "--data-root", toy["data"],
                             "--set", "tokenizer.joint=false")
    assert code == 0, err
    assert sorted(p.name for p in toy["run"].glob("spm*")) == ["spm.src.model", "spm.tgt.model"]
    toks = Tokenizers.load(toy["run"])
    assert not toks.joint
    assert toks.src.proto == (toy["run"] / "spm.src.model").read_bytes()
    assert toks.tgt.proto == (toy["run"] / "spm.tgt.model").read_bytes()


def test_reprepare_removes_train_leftovers_and_keeps_foreign_files(toy, run_cli, caplog):
    code, out, err = run_cli("prepare", toy["config"], "--data-root", toy["data"])
    assert code == 0, err
    run = toy["run"]
    # what a train that died before its first checkpoint, and an evaluate, leave behind
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n', encoding="utf-8")
    (run / "logs" / "train").mkdir(parents=True)
    (run / "logs" / "train" / "events.out.tfevents.1").write_bytes(b"x")
    (run / "eval").mkdir()
    (run / "eval" / "test.hyp").write_text("old\n", encoding="utf-8")
    (run / "checkpoints").mkdir()
    (run / "notes.txt").write_text("mine\n", encoding="utf-8")
    (run / ".prepare-killed" / "corpus").mkdir(parents=True)  # staging of a killed prepare
    (run / ".prepare-killed" / "corpus" / "train.src").write_text("x\n", encoding="utf-8")
    code, out, err = run_cli("prepare", toy["config"], "--data-root", toy["data"],
                             "--set", "tokenizer.joint=false")
    assert code == 0, err
    assert not (run / "metrics.jsonl").exists()
    assert not (run / "logs").exists() and not (run / "eval").exists()
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == [f"{run}: removed metrics.jsonl, logs, eval of an earlier training on "
                       "the replaced preparation"]
    assert (run / "notes.txt").read_text(encoding="utf-8") == "mine\n"
    assert (run / "checkpoints").is_dir()
    assert not [p for p in os.listdir(run) if p.startswith(".")]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing may catch it."""


def test_a_crash_at_any_rename_never_leaves_a_run_that_passes_as_prepared(toy, monkeypatch):
    """Kill the second prepare at its 1st, 2nd, ... file rename (every write and every step
    of the swap goes through one): the run dir is then either exactly the old prepared
    state or not prepared at all, never a mix that ``is_prepared`` accepts."""
    old_cfg = load_config(toy["config"], [])
    new_cfg = load_config(toy["config"], ["tokenizer.joint=false", "data.dev_size=20"])
    real_replace = os.replace
    paths = RunPaths(toy["run"])
    crash_at = 0
    while True:
        crash_at += 1
        monkeypatch.setattr(os, "replace", real_replace)
        prepare(old_cfg, toy["data"])
        before = _state(toy["run"])
        calls = 0

        def replace(a, b, _at=crash_at):
            nonlocal calls
            calls += 1
            if calls == _at:
                raise Crash
            real_replace(a, b)

        monkeypatch.setattr(os, "replace", replace)
        try:
            prepare(new_cfg, toy["data"])
        except Crash:
            pass
        else:
            break  # no rename left to crash at: the new state is in
        if paths.is_prepared():
            assert _state(toy["run"]) == before, f"crash at rename {crash_at}: old and new mixed"
    assert crash_at > 5
    monkeypatch.setattr(os, "replace", real_replace)
    assert paths.is_prepared() and not Tokenizers.load(toy["run"]).joint
    assert sorted(p.name for p in toy["run"].glob("spm*")) == ["spm.src.model", "spm.tgt.model"]
    assert len(read_prepared_split(paths, "dev")) >= 20
    assert not [p for p in os.listdir(toy["run"]) if p.startswith(".")]
