"""End to end on toy data: memorize, translate, evaluate, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, toy_config, toy_pairs, write_aligned, write_config


def test_memorizes_20_pairs_greedy(memorized_run):
    from translator import Translator

    t = Translator.load(memorized_run["run_dir"])
    out = [r.text for r in t.translate(memorized_run["src"], beam_size=1)]
    assert out == memorized_run["tgt"]
    # batched == one by one on the real model
    single = [t.translate([s], beam_size=3)[0].text for s in memorized_run["src"][:5]]
    batched = [r.text for r in t.translate(memorized_run["src"][:5], beam_size=3)]
    assert single == batched


def test_run_dir_is_self_contained(memorized_run):
    run = memorized_run["run_dir"]
    for name in ("config.yaml", "spm.model", "prepare.json", "metrics.jsonl",
                 "checkpoints/best.weights.h5", "checkpoints/state.json"):
        assert (run / name).is_file(), name
    assert list((run / "logs").glob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, len(lines) + 1))
    for key in ("loss", "dev_loss", "dev_bleu", "seconds", "tgt_tokens_per_sec"):
        assert key in lines[0]
    assert lines[-1]["dev_bleu"] == 100.0


def test_translate_cli_line_accounting(memorized_run, run_cli, tmp_path, monkeypatch):
    import io

    run = memorized_run["run_dir"]
    src, tgt = memorized_run["src"], memorized_run["tgt"]
    code, out, err = run_cli("translate", run, src[0], src[1], "--beam-size", "1")
    assert code == 0 and out.splitlines() == tgt[:2]
    # stdin with empty and blank lines: one output line per input line, order kept
    lines = [src[2], "", src[3], "   ", src[4]]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode())))
    code, out, err = run_cli("translate", run)
    assert code == 0
    assert out.split("\n")[:-1] == [tgt[2], "", tgt[3], "", tgt[4]]
    # file in, file out (no trailing newline on the last input line)
    inp, outp = tmp_path / "in.txt", tmp_path / "out.txt"
    inp.write_text("\n".join(src[5:12] + [""] + src[12:15]), encoding="utf-8")
    code, out, err = run_cli("translate", run, "--input", inp, "--output", outp,
                             "--beam-size", "2", "--batch-size", "3")
    assert code == 0 and out == ""
    assert outp.read_text(encoding="utf-8").split("\n")[:-1] == tgt[5:12] + [""] + tgt[12:15]
    # n-best: still one line per input, hypotheses tab-separated
    code, out, err = run_cli("translate", run, src[0], "--beam-size", "3", "--n-best", "3")
    assert code == 0 and len(out.splitlines()) == 1 and len(out.rstrip("\n").split("\t")) == 3
    png = tmp_path / "att.png"
    code, out, err = run_cli("translate", run, src[0], "--attention-plot", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_bleu_100_when_hypotheses_match(memorized_run, run_cli, tmp_path):
    src, tgt = memorized_run["src"], memorized_run["tgt"]
    (tmp_path / "s.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    code, out, err = run_cli("evaluate", memorized_run["run_dir"], "--src", tmp_path / "s.txt",
                             "--ref", tmp_path / "r.txt", "--beam-size", "1",
                             "--output", tmp_path / "hyp.txt")
    assert code == 0, err
    result = json.loads(out)
    assert result["bleu"] == 100.0 and result["chrf"] == 100.0
    # (nltk's corpus_bleu is not 100 here: it counts a 4-gram denominator of 1 for
    # sentences shorter than 4 tokens; tests/test_metrics.py compares it on real text)
    assert "tok:13a" in result["bleu_signature"] and "case:mixed" in result["bleu_signature"]
    assert (tmp_path / "hyp.txt").read_text(encoding="utf-8").splitlines() == tgt
    saved = tmp_path / "hyp.json"  # the record, beside --output's hypotheses
    assert result["json"] == str(saved)
    assert json.loads(saved.read_text(encoding="utf-8")) == result
    code, out, err = run_cli("evaluate", memorized_run["run_dir"], "--src", tmp_path / "s.txt",
                             "--ref", tmp_path / "r.txt", "--beam-size", "1",
                             "--output", tmp_path / "hyp.json")  # not overwritten by the record
    assert code == 0, err
    assert (tmp_path / "hyp.json").read_text(encoding="utf-8").splitlines() == tgt
    assert json.loads((tmp_path / "hyp.json.json").read_text(encoding="utf-8"))["bleu"] == 100.0
    code, out, err = run_cli("evaluate", memorized_run["run_dir"], "--split", "dev",
                             "--beam-size", "1")
    assert code == 0 and json.loads(out)["bleu"] == 100.0
    saved = Path(memorized_run["run_dir"]) / "eval" / "dev.json"
    assert json.loads(out)["json"] == str(saved) and json.loads(saved.read_text()) == json.loads(out)


def test_resume_after_sigkill(tmp_path):
    src, tgt = toy_pairs(400, seed=2, max_words=10)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:20], tgt[:20])
    cfg = toy_config(tmp_path / "run", train={"epochs": 4, "batch_tokens": 256})
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    cmd = [sys.executable, "-m", "translator", "train", str(cfg_path),
           "--data-root", str(tmp_path / "data")]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    state = tmp_path / "run" / "checkpoints" / "state.json"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            killed_at = json.loads(state.read_text())
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    epoch, steps = killed_at["epoch"], killed_at["optimizer_steps"]
    assert epoch < 4
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # the state.json read may lag the real kill point by at most one epoch
    final_state = json.loads(state.read_text())
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    per_epoch = records[0]["optimizer_steps"]
    assert [r["optimizer_steps"] for r in records] == [per_epoch * e for e in (1, 2, 3, 4)]
    resumed = [line for line in done.stderr.splitlines() if line.startswith("resuming from")]
    assert len(resumed) == 1
    resumed_epoch = int(resumed[0].split("(epoch ")[1].split(",")[0])
    resumed_steps = int(resumed[0].split("optimizer step ")[1].split(";")[0])
    assert resumed_epoch >= epoch and resumed_steps == per_epoch * resumed_epoch
    assert resumed_steps >= steps
    assert final_state["epoch"] == 4


def test_resume_draws_new_shuffle_and_dropout_streams(tmp_path):
    """A resumed run must not replay the batch order and dropout masks of epochs 1, 2, ..."""
    import keras
    import numpy as np

    from translator.config import load_config
    from translator.pipeline import filter_by_length, make_dataset
    from translator.prepare import RunPaths, read_prepared_split
    from translator.tokenizer import Tokenizers
    from translator.training import train

    src, tgt = toy_pairs(200, seed=3, max_words=10)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:10], tgt[:10])
    raw = toy_config(tmp_path / "run", model={"dropout": 0.3, "embed_dropout": 0.1},
                     train={"epochs": 1, "batch_tokens": 256})
    first = train(load_config(write_config(tmp_path / "a.yaml", raw)), tmp_path / "data")
    raw["train"]["epochs"] = 2  # the interrupted run's command, re-run
    second = train(load_config(write_config(tmp_path / "b.yaml", raw)), tmp_path / "data")
    assert first["epoch"] == 1 and second["epoch"] == 2
    assert first["seed"] == load_config(tmp_path / "a.yaml").train.seed
    assert second["seed"] != first["seed"]

    run = tmp_path / "run"
    toks = Tokenizers.load(run)
    pairs, _, _, lengths = filter_by_length(read_prepared_split(RunPaths(run), "train"), toks, 20)

    def batch_order(seed):
        ds = make_dataset(pairs, max_len=20, batch_tokens=256, shuffle=True, seed=seed,
                          lengths=lengths)
        return [inputs["source_ids"].numpy()[0].tolist() for inputs, _, _ in ds]

    # a new dataset replays the order of its seed (what a resume with train.seed did)
    order = batch_order(first["seed"])
    assert batch_order(first["seed"]) == order
    assert batch_order(second["seed"]) != order

    inputs = next(iter(make_dataset(pairs, max_len=20, batch_tokens=256, shuffle=False,
                                    lengths=lengths)))[0]

    def dropout_output(seed):
        # as train() does: seed everything, then load the checkpoint
        keras.utils.set_random_seed(seed)
        model = keras.saving.load_model(run / "checkpoints" / "epoch-1.keras", safe_mode=True)
        return keras.ops.convert_to_numpy(model(inputs, training=True))

    output = dropout_output(first["seed"])
    assert np.array_equal(dropout_output(first["seed"]), output)
    assert not np.allclose(dropout_output(second["seed"]), output)

    def decoder_dropout_output(seed):
        # the decoder alone: the encoder's dropout must not hide a fixed decoder stream
        keras.utils.set_random_seed(seed)
        model = keras.saving.load_model(run / "checkpoints" / "epoch-1.keras", safe_mode=True)
        state = model.encode(inputs["source_ids"], training=False)
        return keras.ops.convert_to_numpy(model.decoder(inputs["target_in"], state,
                                                        training=True))

    output = decoder_dropout_output(first["seed"])
    assert np.array_equal(decoder_dropout_output(first["seed"]), output)
    assert not np.allclose(decoder_dropout_output(second["seed"]), output)


def test_average_checkpoints(memorized_run, run_cli, tmp_path):
    import keras
    import numpy as np

    from translator.config import load_config
    from translator.model import build_model
    from translator.tokenizer import Tokenizers

    run = memorized_run["run_dir"]
    ckpts = run / "checkpoints"
    # 60 epochs, train.keep_checkpoints 5 (the default): the newest five are kept
    assert sorted(p.name for p in ckpts.glob("epoch-*.keras")) == [
        f"epoch-{e}.keras" for e in range(56, 61)]
    code, out, err = run_cli("average", run, "--last", "3")
    assert code == 0, err
    result = json.loads(out)
    assert result["epochs"] == [58, 59, 60]
    # the file holds the element-wise mean of the three checkpoints' weights
    toks = Tokenizers.load(run)
    model = build_model(load_config(run / "config.yaml").model, toks.src.vocab_size,
                        toks.tgt.vocab_size)
    per_epoch = []
    for e in (58, 59, 60):
        model.load_weights(ckpts / f"epoch-{e}.keras")
        per_epoch.append([w.numpy() for w in model.weights])
    model.load_weights(result["output"])
    averaged = [w.numpy() for w in model.weights]
    assert any(not np.array_equal(a, b) for a, b in zip(per_epoch[0], per_epoch[2], strict=True))
    for got, *parts in zip(averaged, *per_epoch, strict=True):
        np.testing.assert_allclose(got, np.mean(parts, axis=0), rtol=1e-6, atol=1e-7)
    keras.backend.clear_session()
    # evaluate / translate load it by name from the run's checkpoints/
    src, tgt = memorized_run["src"], memorized_run["tgt"]
    (tmp_path / "s.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    code, out, err = run_cli("evaluate", run, "--src", tmp_path / "s.txt", "--ref",
                             tmp_path / "r.txt", "--weights", "averaged.weights.h5",
                             "--output", tmp_path / "hyp.txt")
    assert code == 0, err
    assert json.loads(out)["weights"] == "averaged.weights.h5"
    # what is not there gets one line and exit code 2
    for argv, message in (
        (["average", run, "--last", "6"], "5 epoch checkpoint(s) kept, 6 asked"),
        (["average", run, "--epochs", "3", "60"], "no checkpoint for epoch(s) [3]"),
        (["average", run, "--last", "2", "--output", tmp_path / "avg.h5"], "must end in .weights.h5"),
        (["translate", run, "x", "--weights", "nope.weights.h5"], "no such weights file"),
    ):
        code, out, err = run_cli(*argv)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1


def _err_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("translator:")]


def test_a_diverging_epoch_writes_nothing_and_the_run_resumes_from_the_last_good_one(
        tmp_path, run_cli):
    import keras
    import numpy as np

    src, tgt = toy_pairs(120, seed=4)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:10], tgt[:10])
    run = tmp_path / "run"
    raw = toy_config(run, train={"epochs": 1, "keep_checkpoints": 1})
    data = tmp_path / "data"
    code, _, err = run_cli("-q", "train", write_config(tmp_path / "a.yaml", raw), "--data-root", data)
    assert code == 0, err
    ckpts = run / "checkpoints"
    good = (ckpts / "epoch-1.keras").read_bytes()
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    metrics = (run / "metrics.jsonl").read_text(encoding="utf-8")
    # Adam's second moments made negative: the first update of epoch 2 takes the square root
    # of a negative number, the weights become NaN and so does the loss of batch 2
    model = keras.saving.load_model(ckpts / "epoch-1.keras", safe_mode=True)
    for v in model.optimizer._velocities:
        v.assign(-np.ones(v.shape, "float32"))
    model.save(ckpts / "epoch-1.keras")
    before["epoch-1.keras"] = (ckpts / "epoch-1.keras").read_bytes()
    raw["train"]["epochs"] = 3
    cfg = write_config(tmp_path / "b.yaml", raw)
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data)
    assert code == 1 and "Traceback" not in err
    [line] = _err_lines(err)
    assert "training diverged" in line and "epoch 2, batch 2" in line, line
    assert "epoch-1.keras (epoch 1): re-running the same command resumes from it" in line
    # no checkpoint, state, pruning, best weights or metrics line came from the NaN epoch
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before
    assert (run / "metrics.jsonl").read_text(encoding="utf-8") == metrics
    # with a good checkpoint back in place, the same command resumes from epoch 1
    (ckpts / "epoch-1.keras").write_bytes(good)
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data)
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_resume_refuses_settings_it_cannot_apply_and_extends_the_lr_decay(tmp_path, run_cli,
                                                                          caplog):
    import logging

    import pytest
    import yaml

    src, tgt = toy_pairs(120, seed=5)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:10], tgt[:10])
    run = tmp_path / "run"
    raw = toy_config(run, train={"epochs": 2, "lr_schedule": "linear_decay", "decay_steps": 0,
                                 "warmup_steps": 0, "learning_rate": 0.01,
                                 "min_learning_rate": 1e-5, "label_smoothing": 0.1})
    cfg = write_config(tmp_path / "a.yaml", raw)
    data = tmp_path / "data"
    assert run_cli("-q", "train", cfg, "--data-root", data)[0] == 0
    config_text = (run / "config.yaml").read_text(encoding="utf-8")
    # the settings the checkpoint keeps (optimizer, schedule, loss) cannot change on resume
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, "--set", "train.epochs=4",
                           "--set", "train.learning_rate=0.02", "--set", "train.label_smoothing=0")
    assert code == 2 and "Traceback" not in err
    [line] = _err_lines(err)
    assert "resuming with other train.learning_rate, train.label_smoothing than" in line
    assert (run / "config.yaml").read_text(encoding="utf-8") == config_text
    # more epochs: the linear decay now ends at the end of epoch 4. config.yaml already says 4,
    # as a resume with epochs=4 that was killed in epoch 3 leaves it: the checkpoint's own
    # schedule, not config.yaml, tells that the decay still ends at epoch 2
    extended = yaml.safe_load(config_text)
    extended["train"]["epochs"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(extended), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="translator")
    code, _, err = run_cli("train", cfg, "--data-root", data, "--set", "train.epochs=4")
    assert code == 0, err
    assert "train.epochs 4: the learning rate now decays linearly" in caplog.text
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    steps = records[0]["optimizer_steps"]
    assert records[1]["learning_rate"] == pytest.approx(1e-5, rel=1e-3)  # the first decay ended
    # the logged rate is the schedule's at the next step, (k * steps + 1) / (4 * steps) along
    for r in records[2:]:
        frac = min(1.0, r["optimizer_steps"] / (4 * steps))
        assert r["learning_rate"] == pytest.approx(0.01 + (1e-5 - 0.01) * frac, rel=1e-3)
    assert records[2]["learning_rate"] > 100 * records[1]["learning_rate"]
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"] == 4
    # a finished run trains nothing more, so config.yaml keeps what it was trained with
    trained = (run / "config.yaml").read_text(encoding="utf-8")
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, "--set", "train.epochs=4",
                           "--set", "train.patience=1")
    assert code == 0, err
    assert (run / "config.yaml").read_text(encoding="utf-8") == trained


def test_bfloat16_mixed_precision_computes_in_bfloat16_and_keeps_float32_weights(tmp_path,
                                                                                 run_cli):
    """``train.mixed_precision: bfloat16``: the layers of the trained (and resumed) model
    compute in bfloat16, every saved weight is float32, decoding loads them into a float32
    model, and the process's global policy is float32 again afterwards."""
    import keras
    import numpy as np

    from translator import Translator
    from translator.training import load_checkpoint

    src, tgt = toy_pairs(120, seed=6)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:10], tgt[:10])
    run = tmp_path / "run"
    # 2 encoder layers: the residual adds the dropout layers' output to the LSTM's
    cfg = write_config(tmp_path / "c.yaml", toy_config(run, train={"epochs": 2},
                                                       model={"encoder_layers": 2}))
    data = tmp_path / "data"
    bf16 = ("--set", "train.mixed_precision=bfloat16")
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, *bf16)
    assert code == 0, err
    assert keras.mixed_precision.global_policy().name == "float32"

    def check(checkpoint, policy="mixed_bfloat16"):
        model = load_checkpoint(checkpoint)  # here, under the global float32 policy
        assert {layer.dtype_policy.name
                for layer in model._flatten_layers(include_self=False)} == {policy}
        assert {w.dtype for w in model.weights} == {"float32"}
        ids = np.array([[4, 5, 6, 2]], np.int32)
        logits = model({"source_ids": ids, "target_in": ids}, training=False)
        assert keras.backend.standardize_dtype(logits.dtype) == policy.split("_")[-1]

    check(run / "checkpoints" / "epoch-2.keras")
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    # a resume keeps computing in bfloat16; it cannot switch the precision of the run
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, *bf16, "--set", "train.epochs=3")
    assert code == 0, err
    check(run / "checkpoints" / "epoch-3.keras")
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, "--set", "train.epochs=4")
    assert code == 2 and "train.mixed_precision" in err and "Traceback" not in err
    # decoding: a float32 model with the trained weights
    t = Translator.load(run)
    assert t.model.compute_dtype == "float32" and t.model.variable_dtype == "float32"
    assert len(t.translate(src[:3], beam_size=2)) == 3
    # false means float32, whatever global policy a library caller has set
    # (the single-process loop and the tf.distribute one)
    for name, distribute in (("fp32", "none"), ("fp32-mirrored", "mirrored")):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            code, _, err = run_cli("-q", "train", cfg, "--data-root", data,
                                   "--set", f"run_dir={tmp_path / name}", "--set", "train.epochs=1",
                                   "--set", f"train.distribute={distribute}")
        finally:
            keras.mixed_precision.set_global_policy("float32")
        assert code == 0, err
        check(tmp_path / name / "checkpoints" / "epoch-1.keras", "float32")


def test_bfloat16_on_a_cpu_without_it_is_a_warning(monkeypatch, caplog):
    import logging

    import keras

    from translator import training

    monkeypatch.setattr(training, "cpu_has_native_bfloat16", lambda: False)
    caplog.set_level(logging.WARNING, logger="translator")
    with training.precision_policy("bfloat16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    [record] = [r for r in caplog.records if "bfloat16" in r.getMessage()]
    assert record.levelno == logging.WARNING and "emulates them" in record.getMessage()
    with training.precision_policy(True):  # float16 never warns
        pass
    assert len(caplog.records) == 1


def test_a_run_written_before_a_model_key_existed_still_resumes(tmp_path, run_cli):
    """A run dir whose config.yaml lacks a key added to the package later (here
    model.word_dropout) is the same setup as the default of that key: re-running the same
    command resumes it. Another value of the key is refused, named."""
    import yaml

    src, tgt = toy_pairs(60, seed=6)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:10], tgt[:10])
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "a.yaml", toy_config(run, train={"epochs": 1}))
    data = tmp_path / "data"
    assert run_cli("-q", "train", cfg, "--data-root", data)[0] == 0
    old = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    del old["model"]["word_dropout"]
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False), encoding="utf-8")
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data,
                           "--set", "model.word_dropout=0.1", "--set", "train.epochs=2")
    assert code == 2 and "Traceback" not in err
    [line] = _err_lines(err)
    assert "different model settings (model.word_dropout)" in line
    code, _, err = run_cli("-q", "train", cfg, "--data-root", data, "--set", "train.epochs=2")
    assert code == 0, err
    records = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2]
