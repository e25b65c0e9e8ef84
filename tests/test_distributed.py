"""train.distribute: TF_CONFIG checks, one MirroredStrategy step == one single-device step,
2 MultiWorkerMirroredStrategy workers on 127.0.0.1 (sync, chief-only writes, resume after a
SIGKILL), and bad cluster setups failing fast with one line."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import (
    NO_SHARED_DATA,
    REPO,
    SHARED_DATA,
    toy_config,
    toy_pairs,
    write_aligned,
    write_config,
)

TINY = REPO / "configs" / "tiny.yaml"
LAUNCH = REPO / "scripts" / "launch_local_cluster.py"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "multi30k").is_dir(), reason=NO_SHARED_DATA)


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="-1",
               TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(cmd, timeout: float, **env) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, killed (SIGKILL: MWMS catches SIGTERM) after
    ``timeout`` seconds."""
    proc = subprocess.Popen([str(c) for c in cmd], env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish in {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tf_config(addresses, index) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def _summaries(output: str) -> dict[int, dict]:
    """The summary JSON line each worker printed last, by worker number."""
    found = {}
    for m in re.finditer(r"^\[worker (\d+)\] (\{.*\"weights_sha256\".*\})$", output, re.M):
        found[int(m[1])] = json.loads(m[2])
    return found


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("translator: error:")]


# ----------------------------------------------------------------------------- config, TF_CONFIG


def test_parse_tf_config_and_resolve():
    from translator.distributed import parse_tf_config, resolve_distribute
    from translator.errors import UserError

    c = parse_tf_config('{"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, '
                        '"task": {"type": "worker", "index": 1}}')
    assert c.addresses == ("a:1", "b:2", "c:3") and c.index == 2 and not c.is_chief
    assert c.others == ("a:1", "b:2")
    assert parse_tf_config(_tf_config(["h:5", "h:6"], 0)).is_chief
    for bad, words in [
        ("{nope", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', '"cluster"'),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'ps'"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task.index"),
        ('{"cluster": {"worker": ["a:1"]}}', '"task"'),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
         "twice"),
    ]:
        with pytest.raises(UserError, match=re.escape(words)):
            parse_tf_config(bad)
    assert resolve_distribute("auto", {}) == "none"  # no GPU here
    assert resolve_distribute("auto", {"TF_CONFIG": _tf_config(["h:5", "h:6"], 1)}) == "multi_worker"
    assert resolve_distribute("none", {"TF_CONFIG": "{bad"}) == "none"
    with pytest.raises(UserError, match="needs TF_CONFIG"):
        resolve_distribute("multi_worker", {})


def test_a_worker_listens_on_its_port_whatever_address_the_others_use():
    # TF_CONFIG holds how the others reach a worker (a DNS name, an address behind NAT),
    # which need not be one of its own interfaces; TensorFlow's server listens on all of them
    from translator.distributed import Cluster, wait_for_workers
    from translator.errors import UserError

    with socket.socket() as peer, socket.socket() as taken:
        peer.bind(("127.0.0.1", 0))
        peer.listen(1)
        own = _free_port()
        other = f"127.0.0.1:{peer.getsockname()[1]}"
        wait_for_workers(Cluster((f"192.0.2.10:{own}", other), 0, "chief/0"), timeout=5)
        taken.bind(("", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on port {busy}.*port taken"):
            wait_for_workers(Cluster((f"127.0.0.1:{busy}", other), 0, "chief/0"), timeout=5)


def test_distribute_config_is_strict(tmp_path):
    from translator.config import ConfigError, config_from_dict

    raw = toy_config(tmp_path / "run")
    assert config_from_dict(raw).train.distribute == "auto"
    with pytest.raises(ConfigError, match="train.distribute='mpi' is not allowed"):
        config_from_dict(raw, ["train.distribute=mpi"])
    with pytest.raises(ConfigError, match="train.distribute_timeout"):
        config_from_dict(raw, ["train.distribute_timeout=0"])


def test_malformed_tf_config_is_one_line_exit_2(tmp_path, run_cli, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", toy_config(tmp_path / "run"))
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1"]}}')
    code, out, err = run_cli("train", cfg, "--data-root", tmp_path)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("translator: error: TF_CONFIG:"), err
    assert "host:port" in lines[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting", ["tokenizer.sample_alpha=0.1", "train.mixed_precision=true"])
def test_settings_the_distributed_loop_lacks_are_refused_not_ignored(tmp_path, run_cli, setting):
    cfg = write_config(tmp_path / "c.yaml", toy_config(tmp_path / "run"))
    code, out, err = run_cli("train", cfg, "--data-root", tmp_path,
                             "--set", "train.distribute=mirrored", "--set", setting)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and setting.split("=")[0] in lines[0], err


# ----------------------------------------------------------------------------- MirroredStrategy


@pytest.mark.parametrize("clip_norm", [0.0, 0.05])
def test_mirrored_step_equals_single_device_step(clip_norm):
    """Two replicas with batches of different sizes and token counts make the same update as
    one device on their concatenation (Adam moments too, which scale with the gradient)."""
    r = _run([sys.executable, REPO / "tests" / "mirrored_step.py", clip_norm], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["steps"] == 1
    assert result["max_update"] > 1e-3  # the step did move the weights
    assert result["max_diff"] < 1e-5, result
    assert result["max_optimizer_rel_diff"] < 1e-5, result


@pytest.mark.parametrize("pairs, remedy", [
    (40, "use fewer devices or smaller batches (a smaller train.fixed_batch_size)"),
    (1, "use fewer devices")])
def test_fewer_batches_than_replicas_is_one_line_with_the_remedy(tmp_path, pairs, remedy):
    """2 replicas in one process, one batch: exit 2 before training, naming what helps."""
    src, tgt = toy_pairs(pairs)
    write_aligned(tmp_path / "toy", "train", src, tgt)
    write_aligned(tmp_path / "toy", "dev", src[:1], tgt[:1])
    cfg = write_config(tmp_path / "c.yaml", toy_config(
        tmp_path / "run", train={"distribute": "mirrored", "bucketing": False,
                                 "fixed_batch_size": 64, "max_len": 100}))
    r = _run([sys.executable, REPO / "tests" / "mirrored_cli.py", "train", cfg,
              "--data-root", tmp_path], timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = _error_lines(r.stderr)
    assert lines == [
        f"translator: error: train: {pairs} training pairs make 1 batch, fewer than the 2 "
        "replicas (1 worker(s) x 2 device(s)), and every replica needs a batch of its own each "
        f"step; {remedy}"], r.stderr[-3000:]
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_each_replica_draws_its_own_dropout_masks():
    """Same batch on 2 replicas, training: the logits differ with dropout only (Keras' mirrored
    seed state gave both replicas one mask); replica 0 draws what one device draws."""
    r = _run([sys.executable, REPO / "tests" / "replica_dropout.py", "mirrored"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["same_as_keras"], result  # outside a strategy: keras.random.dropout's masks
    assert abs(result["kept_share"] - 0.7) < 0.03, result
    assert result["replicas_differ_with_dropout"] > 1e-3, result
    assert result["replica0_vs_single_device"] < 1e-6, result
    assert result["replicas_differ_without_dropout"] == 0.0, result
    assert result["replicas_differ_in_inference"] == 0.0, result


def test_workers_draw_different_dropout_masks():
    """2 MultiWorkerMirroredStrategy processes, generators seeded alike: the replica id is
    global (0 and 1) and the masks differ."""
    ports = [_free_port(), _free_port()]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "replica_dropout.py"), "worker"],
                              env=_env(TF_CONFIG=_tf_config(addresses, i)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for i in range(2)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert [r["replica_id"] for r in results] == [0, 1]
    assert all(r["replicas"] == 2 and abs(r["kept"] - 0.5) < 0.05 for r in results), results
    assert results[0]["mask_sha256"] != results[1]["mask_sha256"]


# ----------------------------------------------------------------------------- 2 workers


@needs_data
def test_two_workers_train_in_sync(tmp_path):
    """The tiny config (token budget, length bucketing), 2 epochs on 2 worker processes."""
    run = tmp_path / "run"
    sets = [f"run_dir={run}", "train.epochs=2", "train.distribute_timeout=60"]
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("translator-worker1-*"))
    r = _run([sys.executable, LAUNCH, TINY, "--workers", "2", "--", "--data-root", SHARED_DATA,
              "--json", *[a for s in sets for a in ("--set", s)]], timeout=900)
    assert r.returncode == 0, r.stdout[-5000:]
    summaries = _summaries(r.stdout)
    assert set(summaries) == {0, 1}, r.stdout[-3000:]
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]
    assert summaries[0]["epoch"] == summaries[1]["epoch"] == 2
    assert [s["worker"] for s in (summaries[0], summaries[1])] == ["worker/0", "worker/1"]
    # only the chief's run dir has checkpoints and metrics; the other's temp dir is gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.weights.h5", "epoch-1.keras", "epoch-2.keras", "state.json"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["loss"] < records[0]["loss"]
    assert all(r["dev_loss"] is not None and r["dev_bleu"] is not None for r in records)
    assert list((run / "logs").glob("events.out.tfevents.*"))
    assert set(scratch.glob("translator-worker1-*")) == before  # worker 1's dir is gone
    # half the batches of one process on all the data (which make_dataset counts exactly):
    # the pairs are dealt out in whole batches
    from translator.pipeline import count_batches, filter_by_length
    from translator.prepare import RunPaths, read_prepared_split
    from translator.tokenizer import Tokenizers

    paths = RunPaths(run)
    lengths = filter_by_length(read_prepared_split(paths, "train"), Tokenizers.load(run),
                               60).lengths
    single = count_batches(lengths, max_len=60, batch_tokens=1024)
    steps = summaries[0]["steps_per_epoch"]
    assert steps == single // 2, (steps, single)
    left_out = " (1 batch of each epoch's shuffle left out)" if single % 2 else ""
    assert f"in {single:,} batches, dealt out by whole batches" in r.stdout
    assert f"every worker runs {steps:,} steps per epoch{left_out}" in r.stdout
    assert records[0]["optimizer_steps"] == steps and records[1]["optimizer_steps"] == 2 * steps
    # and the checkpoint is an ordinary one: the Translator loads it
    from translator import Translator

    assert Translator.load(run).translate(["ein Hund"], beam_size=1)[0].text is not None


@needs_data
def test_sigkill_of_a_worker_then_relaunch_resumes_at_epoch_2(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "paused"
    sets = [f"run_dir={run}", "train.epochs=2", "train.distribute_timeout=60"]
    cmd = [sys.executable, LAUNCH, TINY, "--workers", "2", "--", "--data-root", SHARED_DATA,
           "--json", *[a for s in sets for a in ("--set", s)]]
    # first launch: the workers pause while writing epoch-2.keras; then worker 1 is killed
    proc = subprocess.Popen([str(c) for c in cmd], env=_env(
        TRANSLATOR_TEST_PAUSE_IN_SAVE="epoch-2.keras", TRANSLATOR_TEST_PAUSE_MARKER=str(marker)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no pause in saving epoch-2.keras:\n{proc.stdout.read()[-5000:]}")
            time.sleep(0.5)
        state = json.loads((run / "checkpoints" / "state.json").read_text())
        assert state["epoch"] == 1
        pids = {}
        while 1 not in pids:  # the launcher printed the pids first
            line = proc.stdout.readline()
            m = re.match(r"\[launcher\] worker (\d+): pid (\d+)", line)
            if m:
                pids[int(m[1])] = int(m[2])
        os.kill(pids[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 128 + signal.SIGKILL, out[-3000:]
    assert "worker 1 exited with 137; stopping the others" in out
    from translator.distributed import worker_scratch_dir
    left = worker_scratch_dir(str(run), "worker/1")
    assert left.is_dir()  # what the SIGKILLed worker could not remove; its next start does
    # re-launch the same job: it resumes at epoch 2 from the chief's checkpoint
    r = _run(cmd, timeout=900)
    assert r.returncode == 0, r.stdout[-5000:]
    assert "resuming from epoch-1.keras (epoch 1" in r.stdout
    summaries = _summaries(r.stdout)
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]
    assert summaries[0]["epoch"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert not left.exists()
    steps = summaries[0]["steps_per_epoch"]
    assert records[1]["optimizer_steps"] == 2 * steps


# ----------------------------------------------------------------------------- bad setups


def test_unreachable_worker_is_one_line_exit_2(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", toy_config(
        tmp_path / "run", train={"distribute_timeout": 3}))
    me, nobody = _free_port(), _free_port()
    start = time.monotonic()
    r = _run([sys.executable, "-m", "translator", "train", cfg, "--data-root", tmp_path],
             timeout=120, TF_CONFIG=_tf_config([f"127.0.0.1:{me}", f"127.0.0.1:{nobody}"], 0))
    assert r.returncode == 2, r.stderr[-3000:]
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and f"nothing answers at 127.0.0.1:{nobody}" in lines[0], r.stderr
    assert time.monotonic() - start < 100


def test_workers_with_different_configs_stop_with_one_line(tmp_path):
    from conftest import toy_pairs, write_aligned

    src, tgt = toy_pairs(60, seed=3)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:10], tgt[:10])
    cfg = write_config(tmp_path / "c.yaml", toy_config(
        tmp_path / "run", train={"epochs": 1, "distribute_timeout": 60}))
    addresses = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    procs = []
    for i, extra in enumerate([[], ["--set", "train.label_smoothing=0.2"]]):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "translator", "train", str(cfg), "--data-root",
             str(tmp_path / "data"), *extra],
            env=_env(TF_CONFIG=_tf_config(addresses, i)), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True))
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 2, err[-3000:]
        lines = _error_lines(err)
        assert len(lines) == 1 and "different configs" in lines[0], err[-3000:]
        assert addresses[1] in lines[0]
    assert not (tmp_path / "run" / "checkpoints" / "epoch-1.keras").exists()
