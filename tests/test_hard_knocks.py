"""Training that survives hard knocks: a second train on the same run dir, a killed or
interrupted train, a truncated checkpoint, a full disk, a checkpoint carrying code.

Most cases run ``python -m translator train`` as a real child process and knock it over.
They start from a copy of one run trained for two epochs (``trained``)."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, toy_config, toy_pairs, write_aligned, write_config

ENV = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for 2 epochs on 120 toy pairs (dev = 10 of them)."""
    from translator.cli import main

    root = tmp_path_factory.mktemp("knocks")
    src, tgt = toy_pairs(120, seed=4)
    write_aligned(root / "data" / "toy", "train", src, tgt)
    write_aligned(root / "data" / "toy", "dev", src[:10], tgt[:10])
    cfg = write_config(root / "cfg.yaml", toy_config(root / "run", train={"epochs": 2}))
    assert main(["-q", "train", str(cfg), "--data-root", str(root / "data")]) == 0
    return root


def _copy_run(trained: Path, tmp_path: Path, epochs: int, **train) -> tuple[Path, Path]:
    """A copy of the trained run under ``tmp_path``; returns (run dir, config path)."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    cfg = toy_config(run, train={"epochs": epochs, **train})
    return run, write_config(tmp_path / "cfg.yaml", cfg)


def _train_cmd(cfg: Path, trained: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "translator", *extra, "train", str(cfg),
            "--data-root", str(trained / "data")]


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("translator:")]


def _state(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "state.json").read_text(encoding="utf-8"))


def _temps(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                  if p.name.startswith(".tmp-") or ".tmp" in p.name)


def _wait_for(condition, proc, what: str, limit: float = 300) -> None:
    deadline = time.time() + limit
    while not condition():
        assert proc.poll() is None, f"the child exited ({proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} within {limit} s"
        time.sleep(0.05)


def _epochs(run: Path) -> list[int]:
    text = (run / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["epoch"] for line in text.splitlines()]


# ----------------------------------------------------------------------------- 1. the lock


def test_a_second_train_on_a_run_dir_in_training_is_refused_and_a_dead_ones_lock_is_taken_over(
        trained, tmp_path):
    run, cfg = _copy_run(trained, tmp_path, epochs=100_000, patience=100_000)
    lock = run / "train.lock"
    with open(tmp_path / "first.err", "wb") as err:
        first = subprocess.Popen(_train_cmd(cfg, trained, "-q"), env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait_for(lambda: lock.is_file() and lock.read_text().split()[:1] == [str(first.pid)],
                  first, "train.lock holding the first train's pid")
        second = subprocess.run(_train_cmd(cfg, trained, "-q"), env=ENV, capture_output=True,
                                text=True, timeout=300)
        assert first.poll() is None  # still training
        assert second.returncode == 2, second.stderr[-2000:]
        [line] = _lines(second.stderr)
        assert line.startswith(f"translator: error: {run} is being trained by pid {first.pid} ")
        assert "Traceback" not in second.stderr
        # a prepare would swap the tokenizers in under the running train: refused too
        prep = subprocess.run([sys.executable, "-m", "translator", "prepare", str(cfg),
                               "--data-root", str(trained / "data")], env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert prep.returncode == 2, prep.stderr[-2000:]
        [line] = _lines(prep.stderr)
        assert line.startswith(f"translator: error: {run} is being trained by pid {first.pid} ")
        assert lock.read_text().split() == [str(first.pid), "trained"]  # left alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILL runs no cleanup: the lock file of a dead process stays; the next train takes it
    assert lock.read_text().split() == [str(first.pid), "trained"]
    third = subprocess.run(_train_cmd(cfg, trained) + ["--set", "train.epochs=2"], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"taking over the lock of pid {first.pid}, which is gone" in third.stderr
    assert "nothing to do: finished at epoch" in third.stderr
    assert not lock.exists()  # released at exit


# ----------------------------------------------------------------------------- 2. truncated


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(trained, tmp_path,
                                                                      run_cli, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="translator")
    run, cfg = _copy_run(trained, tmp_path, epochs=3)
    ckpts = run / "checkpoints"
    data = trained / "data"
    newest = ckpts / "epoch-2.keras"
    whole = newest.read_bytes()
    newest.write_bytes(whole[: len(whole) // 2])
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data)
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("translator")]
    assert warnings == [
        f"{newest}: cannot load it (not a complete .keras zip archive; truncated?); resuming "
        "from epoch-1.keras instead, epoch 2 is trained again (the file is kept as "
        "epoch-2.keras.unreadable)"]
    # state.json, metrics.jsonl and the checkpoints go on from epoch 1 as if epoch 2 never was
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = records[0]["optimizer_steps"]
    assert f"resuming from epoch-1.keras (epoch 1, optimizer step {steps};" in caplog.text
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["optimizer_steps"] for r in records] == [steps, 2 * steps, 3 * steps]
    state = _state(run)
    assert state["epoch"] == 3 and state["last"] == "epoch-3.keras"
    assert state["optimizer_steps"] == 3 * steps
    assert (ckpts / "epoch-2.keras.unreadable").read_bytes() == whole[: len(whole) // 2]
    assert zipfile.ZipFile(ckpts / "epoch-2.keras").testzip() is None

    # nothing earlier to fall back to: one line that says how to start over
    for older in ("epoch-1.keras", "epoch-2.keras"):
        (ckpts / older).unlink()
    (ckpts / "epoch-3.keras").write_bytes(b"")
    caplog.clear()
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, "--set", "train.epochs=4")
    assert code == 2 and "Traceback" not in err
    [line] = _lines(err)
    assert line == (
        f"translator: error: {ckpts / 'epoch-3.keras'}: cannot load the checkpoint to resume "
        "from (not a complete .keras zip archive; truncated?), and no earlier checkpoint is "
        f"kept; to start over, delete {ckpts}/ or train a new run_dir")
    # which works
    shutil.rmtree(ckpts)
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, "--set", "train.epochs=1")
    assert code == 0, err
    assert _epochs(run) == [1] and _state(run)["epoch"] == 1


# ----------------------------------------------------------------------------- 3. SIGKILL in a save


def test_a_sigkill_while_a_checkpoint_is_written_leaves_the_previous_one_and_state_intact(
        trained, tmp_path):
    import keras

    import translator.training  # noqa: F401  (registers the schedule and loss)

    run, cfg = _copy_run(trained, tmp_path, epochs=4)
    ckpts = run / "checkpoints"
    marker = tmp_path / "paused"
    env = dict(ENV, TRANSLATOR_TEST_PAUSE_IN_SAVE="epoch-3.keras",
               TRANSLATOR_TEST_PAUSE_MARKER=str(marker))
    child = subprocess.Popen(_train_cmd(cfg, trained, "-q"), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(marker.is_file, child, "pause in the write of epoch-3.keras")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert marker.read_text() == str(ckpts / ".tmp-epoch-3.keras")
    # the new checkpoint was all written to its temp file, not yet renamed: the old state holds
    assert (ckpts / ".tmp-epoch-3.keras").is_file()
    assert not (ckpts / "epoch-3.keras").exists()
    state = _state(run)
    assert state["epoch"] == 2 and state["last"] == "epoch-2.keras"
    previous = keras.saving.load_model(ckpts / "epoch-2.keras", safe_mode=True)
    steps = int(previous.optimizer.iterations.numpy())
    assert steps == state["optimizer_steps"]
    keras.backend.clear_session()

    done = subprocess.run(_train_cmd(cfg, trained), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("removed checkpoints/.tmp-epoch-3.keras: partial writes of a train that was killed"
            in done.stderr)
    assert f"resuming from epoch-2.keras (epoch 2, optimizer step {steps};" in done.stderr
    assert _epochs(run) == [1, 2, 3, 4] and _state(run)["epoch"] == 4
    assert _temps(run) == []


# ----------------------------------------------------------------------------- 4. full disk


def _file_size_limit(limit: int):
    def preexec():  # in the child: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return preexec


def test_a_checkpoint_write_that_fails_for_space_is_one_line_and_leaves_no_temp_file(
        trained, tmp_path):
    run, cfg = _copy_run(trained, tmp_path, epochs=3)
    ckpts = run / "checkpoints"
    state_file = ckpts / "state.json"
    original_state = state_file.read_text(encoding="utf-8")
    # files of at most this size can be written: small ones (metrics, state, logs) but no
    # checkpoint (best.weights.h5 and epoch-N.keras are about the same size)
    limit = min((ckpts / "best.weights.h5").stat().st_size,
                (ckpts / "epoch-2.keras").stat().st_size) - 4096
    last = ckpts / "epoch-2.keras"
    for best_bleu, failing in ((1000.0, "epoch-3.keras"), (-1.0, "best.weights.h5")):
        # 1000: epoch 3 cannot improve, only its epoch checkpoint is written;
        # -1: it improves, and the best weights are written first
        state_file.write_text(json.dumps({**json.loads(original_state), "best_bleu": best_bleu}))
        before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
        done = subprocess.run(_train_cmd(cfg, trained, "-q"), env=ENV, capture_output=True,
                              text=True, timeout=600, preexec_fn=_file_size_limit(limit))
        assert done.returncode == 1, done.stderr[-3000:]
        assert _lines(done.stderr) == [
            f"translator: error: cannot write checkpoint {ckpts / failing}: File too large; "
            f"free disk space and re-run the same command to resume from {last} (epoch 2)"]
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before
        assert _temps(run) == []
    state_file.write_text(original_state)
    done = subprocess.run(_train_cmd(cfg, trained, "-q"), env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _epochs(run) == [1, 2, 3] and _state(run)["epoch"] == 3


# ----------------------------------------------------------------------------- 5. safe mode


def test_a_checkpoint_carrying_a_python_lambda_is_refused(trained, tmp_path, run_cli):
    import keras

    run, cfg = _copy_run(trained, tmp_path, epochs=3)
    evil = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)])
    evil.save(run / "checkpoints" / "epoch-2.keras")
    keras.backend.clear_session()
    code, _, err = run_cli("-q", "train", cfg, "--data-root", trained / "data")
    assert code == 2 and "Traceback" not in err
    [line] = _lines(err)
    assert line.startswith(
        f"translator: error: {run / 'checkpoints' / 'epoch-2.keras'}: refused to load: the file "
        "holds Python code (a Lambda layer or function) that loading would run, and checkpoints "
        "load with safe_mode=True")
    assert _state(run)["epoch"] == 2  # no fallback to epoch 1 for such a file


# ----------------------------------------------------------------------------- 6. Ctrl-C


class _Finalized:
    """An object whose ``__del__`` runs when the garbage collector takes it, as TensorFlow's
    weakref callbacks do: an exception raised in there is "ignored" by Python."""

    def __init__(self, action):
        self.action = action

    def __del__(self):
        self.action()


def _sigint_to_self():
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.time() + 5
    while time.time() < deadline:  # the handler raises in here, inside __del__
        time.sleep(0.001)


def test_a_ctrl_c_that_python_dropped_in_a_finalizer_is_raised_at_the_next_boundary(monkeypatch):
    from translator.training import CtrlC

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ctrl_c = CtrlC()
    with ctrl_c.watching():
        ctrl_c.check()  # nothing pressed: no-op
        _Finalized(lambda: None)
        ctrl_c.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # a dropped one is also raised when the block ends
        with ctrl_c.watching():
            _Finalized(_sigint_to_self)  # collected at once: the Ctrl-C is dropped in __del__
            assert ctrl_c.pressed
            with pytest.raises(KeyboardInterrupt):
                ctrl_c.check()  # what every batch and epoch boundary calls
            assert unraisable == []  # not printed as "Exception ignored"

            def fail():
                raise ValueError("another error in a finalizer")
            _Finalized(fail)
            assert [type(u.exc_value) for u in unraisable] == [ValueError]  # still reported
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook == unraisable.append

    install = signal.signal

    def install_then_ctrl_c(signum, handler):  # a Ctrl-C right as the handler goes in
        previous = install(signum, handler)
        if getattr(handler, "__self__", None) is early:
            _sigint_to_self()
        return previous

    early = CtrlC()
    monkeypatch.setattr(signal, "signal", install_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with early.watching():
            raise AssertionError("the block ran")
    monkeypatch.setattr(signal, "signal", install)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored anyway
    assert sys.unraisablehook == unraisable.append
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's: it stays ignored
    try:
        with CtrlC().watching():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_in_an_epoch_exits_at_once_saying_where_the_last_checkpoint_is(trained,
                                                                              tmp_path):
    run, cfg = _copy_run(trained, tmp_path, epochs=100_000, patience=100_000)
    ckpts = run / "checkpoints"

    def default_sigint():  # a child of a background job would start with SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with open(tmp_path / "err", "w+b") as err:
        child = subprocess.Popen(_train_cmd(cfg, trained, "-q"), env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=err,
                                 preexec_fn=default_sigint)
        try:
            _wait_for(lambda: (ckpts / "epoch-3.keras").is_file(), child, "epoch-3.keras")
            time.sleep(0.5)  # into epoch 4
            sent = time.time()
            child.send_signal(signal.SIGINT)
            code = child.wait(timeout=30)
            seconds = time.time() - sent
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    assert code == 130, stderr[-2000:]
    assert seconds < 10, seconds
    assert "Traceback" not in stderr
    [line] = _lines(stderr)
    state = _state(run)  # intact: valid JSON naming a complete checkpoint
    assert state["epoch"] >= 3
    assert zipfile.ZipFile(ckpts / state["last"]).testzip() is None
    match = re.fullmatch(r"translator: interrupted in epoch (\d+); the last checkpoint is (\S+) "
                         r"\(epoch (\d+)\): re-running the same command resumes from it", line)
    assert match, line
    assert int(match[1]) in (state["epoch"], state["epoch"] + 1)
    assert match[2] == str(ckpts / state["last"]) and int(match[3]) == state["epoch"]
    assert _temps(run) == []
    assert not (run / "train.lock").exists()
