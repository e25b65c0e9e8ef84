"""What a person sees: no TensorFlow start-up noise, options anywhere, readable training."""

import json
import os
import pty
import subprocess
import sys

from conftest import REPO, toy_config, toy_pairs, write_aligned, write_config

NOISE = ("absl::InitializeLog", "cudart_stub", "cuInit", "oneDNN", "cpu_feature_guard")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSLATOR_VERBOSE",
                                                            "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _cli(*argv, **env):
    return subprocess.run([sys.executable, "-m", "translator", *map(str, argv)],
                          capture_output=True, text=True, env=_env(**env), timeout=300)


def test_translate_prints_the_translation_and_nothing_else(memorized_run):
    run, src = memorized_run["run_dir"], memorized_run["src"]
    done = _cli("translate", run, src[0])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and len(done.stdout.splitlines()) == 1
    assert done.stderr == ""  # TensorFlow's C++ start-up lines are filtered out
    # they are there: TRANSLATOR_VERBOSE=1 lets them through again
    loud = _cli("translate", run, src[0], TRANSLATOR_VERBOSE="1")
    assert loud.returncode == 0 and loud.stdout == done.stdout
    assert any(word in loud.stderr for word in NOISE), loud.stderr


def test_the_filter_lets_every_other_stderr_line_through(memorized_run):
    run = memorized_run["run_dir"]
    done = _cli("translate", run, "x", "--weights", "missing.weights.h5")
    assert done.returncode == 2
    assert done.stderr.startswith("translator: error: missing.weights.h5: no such weights file")
    assert len(done.stderr.splitlines()) == 1


def test_options_and_text_in_any_order_and_one_prefix(memorized_run, run_cli):
    run, src, tgt = memorized_run["run_dir"], memorized_run["src"], memorized_run["tgt"]
    code, out, err = run_cli("translate", run, "--beam-size", "2", src[0], "--batch-size", "4",
                             src[1])
    assert code == 0, err
    assert out.splitlines() == tgt[:2]
    code, out, err = run_cli("translate", run, src[0], "--bogus")
    assert code == 2
    assert err.strip() == "translator: error: translate: unrecognized arguments: --bogus"
    code, out, err = run_cli("-q", "nosuch")
    assert code == 2 and err.startswith("translator: error: argument command: invalid choice")


def _toy(tmp_path, epochs=2):
    src, tgt = toy_pairs(80, seed=6)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:8], tgt[:8])
    return write_config(tmp_path / "cfg.yaml",
                        toy_config(tmp_path / "run", train={"epochs": epochs}))


def test_prepare_prints_its_table_and_the_config_only_when_verbose(tmp_path, run_cli):
    cfg = _toy(tmp_path)
    code, out, err = run_cli("prepare", cfg, "--data-root", tmp_path / "data")
    assert code == 0, err
    assert out.startswith(f"prepared {tmp_path / 'run'}\npairs read") and "tokenizer:" not in out
    assert "tokenizer:" not in err
    code, out, err = run_cli("prepare", cfg, "--data-root", tmp_path / "data", "--verbose")
    assert code == 0, err
    assert "tokenizer:\n  type: unigram" in err and out.startswith("prepared ")


def test_train_in_a_terminal_shows_readable_lines_and_what_to_run_next(tmp_path):
    cfg = _toy(tmp_path)
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "translator", "train", str(cfg),
                              "--data-root", str(tmp_path / "data")], stdin=follower,
                             stdout=follower, stderr=follower, env=_env(TERM="xterm"),
                             close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert child.wait(timeout=300) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert '{"epoch"' not in screen  # no raw JSON records in a terminal
    for epoch in (1, 2):
        assert f"epoch {epoch}/2  loss " in screen and " dev BLEU " in screen
    run = tmp_path / "run"
    assert f"weights: {run / 'checkpoints' / 'best.weights.h5'}" in screen
    assert f"translator translate {run} " in screen
    assert not any(word in screen for word in NOISE)
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2]


def test_train_without_a_terminal_prints_json_lines(tmp_path):
    cfg = _toy(tmp_path)
    done = _cli("train", cfg, "--data-root", tmp_path / "data")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["epoch"] for r in lines[:-1]] == [1, 2]
    assert lines[-1]["run_dir"] == str(tmp_path / "run") and lines[-1]["epoch"] == 2
    assert not any(word in done.stderr for word in NOISE)
