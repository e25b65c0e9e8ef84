"""Subword regularization (``tokenizer.sample_alpha``): sampled segmentations in the
training pipeline only; and a second ensemble member prepared identically."""

from __future__ import annotations

import json

import numpy as np
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

from translator.config import ConfigError, TokenizerConfig, load_config
from translator.corpus import Pairs
from translator.pipeline import SubwordSampler, count_batches, filter_by_length, make_dataset
from translator.tokenizer import EOS_ID, PAD_ID, train_tokenizers

SENTENCE = "der kleine hund spielt mit der roten katze im garten"


@pytest.fixture(scope="module")
def setup():
    src, tgt = toy_pairs(300, max_words=12)
    toks = train_tokenizers(src, tgt, TokenizerConfig(vocab_size=60))
    return Pairs(src, tgt), toks


def _draws(toks, text, alpha, nbest=-1, n=20):
    import tensorflow as tf

    sampler = SubwordSampler(toks, alpha=alpha, nbest=nbest, max_len=1000)
    det = tf.constant(toks.src.encode([text])[0], tf.int32)
    return [tuple(sampler.sample(tf.constant(text), det).numpy().tolist()) for _ in range(n)]


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_sampling_differs_per_call_and_decodes_back(setup, kind):
    pairs, toks = setup
    if kind == "bpe":  # BPE-dropout: alpha is the probability of skipping a merge
        toks = train_tokenizers(pairs.src, pairs.tgt, TokenizerConfig(type="bpe", vocab_size=80))
    draws = _draws(toks, SENTENCE, alpha=0.1)
    assert len(set(draws)) >= 2
    for ids in draws:
        assert toks.src.decode(ids) == SENTENCE
    deterministic = tuple(toks.src.encode([SENTENCE])[0])
    assert any(d != deterministic for d in draws)


def test_nbest_limits_the_candidates(setup):
    _, toks = setup
    assert len(set(_draws(toks, SENTENCE, alpha=0.5, nbest=2, n=40))) <= 2


def _epoch(ds):
    """(source rows, target_out rows) of one pass, padding and EOS stripped, in order."""
    src, tgt = [], []
    for inputs, target_out, _ in ds:
        for row in inputs["source_ids"].numpy():
            src.append(tuple(int(i) for i in row if i not in (PAD_ID, EOS_ID)))
        for row in target_out.numpy():
            tgt.append(tuple(int(i) for i in row if i not in (PAD_ID, EOS_ID)))
    return src, tgt


def test_alpha_zero_keeps_todays_ids(setup):
    """Without a sampler the batches hold exactly Tokenizer.encode's ids."""
    pairs, toks = setup
    kept, _, _, lengths = filter_by_length(pairs, toks, max_len=40)
    ds = make_dataset(kept, max_len=40, batch_tokens=300, shuffle=False, bucketing=False,
                      fixed_batch_size=16, lengths=lengths)
    src, tgt = _epoch(ds)
    assert src == [tuple(x) for x in toks.src.encode(pairs.src)]
    assert tgt == [tuple(x) for x in toks.tgt.encode(pairs.tgt)]


@pytest.mark.parametrize("bucketing", [True, False])
def test_sampled_epochs_differ_dev_does_not(setup, bucketing):
    pairs, toks = setup
    kept, _, _, lengths = filter_by_length(pairs, toks, max_len=40)
    sampler = SubwordSampler(toks, alpha=0.1, nbest=-1, max_len=40)
    ds = make_dataset(kept, max_len=40, batch_tokens=300, shuffle=True, seed=1,
                      bucketing=bucketing, fixed_batch_size=16, lengths=lengths,
                      sampler=sampler)
    expected = count_batches(lengths, max_len=40, batch_tokens=300, bucketing=bucketing,
                             fixed_batch_size=16)
    epochs = []
    for _ in range(2):
        n = sum(1 for _ in ds)  # assert_cardinality fails the pass if the count differs
        assert n == expected
        epochs.append(_epoch(ds))
    for src, tgt in epochs:  # every pair once, each sampled side decodes to its sentence
        assert sorted(toks.src.decode(s) for s in src) == sorted(pairs.src)
        assert sorted(toks.tgt.decode(t) for t in tgt) == sorted(pairs.tgt)
    deterministic = {tuple(x) for x in toks.src.encode(pairs.src)}
    assert set(epochs[0][0]) != deterministic  # sampling happened
    assert sorted(epochs[0][0]) != sorted(epochs[1][0])  # and anew in the next epoch

    dev = make_dataset(kept, max_len=40, batch_tokens=300, shuffle=False, lengths=lengths)
    assert _epoch(dev) == _epoch(dev)
    assert set(_epoch(dev)[0]) == deterministic


def test_too_long_samples_fall_back_to_deterministic_ids(setup):
    pairs, toks = setup
    max_len = max(len(x) for x in toks.src.encode(pairs.src) + toks.tgt.encode(pairs.tgt))
    kept, dropped, _, lengths = filter_by_length(pairs, toks, max_len=max_len)
    assert dropped == 0
    sampler = SubwordSampler(toks, alpha=0.0001, nbest=-1, max_len=max_len)  # ~uniform
    ds = make_dataset(kept, max_len=max_len, batch_tokens=max_len * 20, shuffle=True,
                      lengths=lengths, sampler=sampler)
    src, tgt = _epoch(ds)
    assert max(map(len, src + tgt)) <= max_len
    assert set(src) != {tuple(x) for x in toks.src.encode(pairs.src)}  # others were sampled
    assert sorted(toks.src.decode(s) for s in src) == sorted(pairs.src)
    fallbacks = sampler.take_fallbacks()
    assert fallbacks > 0 and sampler.take_fallbacks() == 0


@pytest.mark.parametrize("override, message", [
    ("tokenizer.sample_alpha=1.5", "tokenizer.sample_alpha=1.5 is out of range"),
    ("tokenizer.sample_alpha=-0.1", "tokenizer.sample_alpha=-0.1 is out of range"),
    ("tokenizer.sample_alpha=.nan", "tokenizer.sample_alpha=nan is not a finite number"),
    ("tokenizer.sample_nbest=-2", "tokenizer.sample_nbest=-2 is out of range"),
    ("tokenizer.sample_nbest=513", "tokenizer.sample_nbest=513 is out of range"),
    ("tokenizer.sample_nbest=0.5", "tokenizer.sample_nbest=0.5 has the wrong type"),
])
def test_sampling_keys_are_validated(tmp_path, override, message):
    path = write_config(tmp_path / "c.yaml", toy_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path, [override])


@pytest.mark.parametrize("nbest", [0, 1])
def test_nbest_that_turns_sampling_off_is_refused(tmp_path, nbest):
    path = write_config(tmp_path / "c.yaml", toy_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match=f"tokenizer.sample_nbest={nbest} turns sampling off"):
        load_config(path, ["tokenizer.sample_alpha=0.1", f"tokenizer.sample_nbest={nbest}"])
    assert load_config(path, [f"tokenizer.sample_nbest={nbest}"]).tokenizer.sample_alpha == 0


def test_sampling_with_xla_is_refused(tmp_path):
    path = write_config(tmp_path / "c.yaml", toy_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match="needs train.jit_compile: false"):
        load_config(path, ["tokenizer.sample_alpha=0.1", "train.jit_compile=true"])


def test_tiny_training_with_sampling_runs_and_resumes(tmp_path):
    """Two epochs with alpha > 0, the second one a resume; the prepared run dir is the
    one an alpha-0 config prepared (the sampling keys change no prepared file)."""
    from translator.prepare import prepare
    from translator.training import train

    src, tgt = toy_pairs(200, seed=3, max_words=10)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:10], tgt[:10])
    raw = toy_config(tmp_path / "run", train={"epochs": 1, "batch_tokens": 256})
    prepare(load_config(write_config(tmp_path / "p.yaml", raw)), tmp_path / "data")
    raw["tokenizer"].update(sample_alpha=0.2, sample_nbest=-1)
    messages = []
    first = train(load_config(write_config(tmp_path / "a.yaml", raw)), tmp_path / "data",
                  report=messages.append)
    assert any("subword regularization" in m for m in messages)
    raw["train"]["epochs"] = 2
    second = train(load_config(write_config(tmp_path / "b.yaml", raw)), tmp_path / "data",
                   report=messages.append)
    assert first["epoch"] == 1 and second["epoch"] == 2
    assert any(m.startswith("resuming from epoch-1.keras") for m in messages)
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(isinstance(r["sampled_over_max_len"], int) for r in records)
    assert all(np.isfinite(r["loss"]) for r in records)
    assert load_config(tmp_path / "run" / "config.yaml").tokenizer.sample_alpha == 0.2


def _prepared_files(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in ("config.yaml", "prepare.json", "train.lock")}


def test_second_seed_prepares_identically(tmp_path, run_cli):
    """`--set run_dir=... --set train.seed=2` (a second ensemble member) re-prepares the
    same corpus into its own run dir: byte-identical tokenizer and splits."""
    src, tgt = toy_pairs(400, seed=5, max_words=10)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    raw = toy_config(tmp_path / "run", data={"dev": None, "dev_size": 40, "test_size": 40})
    cfg = write_config(tmp_path / "c.yaml", raw)
    runs = [tmp_path / "run", tmp_path / "run-seed2"]
    assert run_cli("prepare", cfg, "--data-root", tmp_path / "data")[0] == 0
    assert run_cli("prepare", cfg, "--data-root", tmp_path / "data", "--set",
                   f"run_dir={runs[1]}", "--set", "train.seed=2")[0] == 0
    first, second = (_prepared_files(r) for r in runs)
    assert {"spm.model", "corpus/train.src", "corpus/dev.tgt", "corpus/test.src"} <= set(first)
    assert first == second
    stats = [json.loads((r / "prepare.json").read_text(encoding="utf-8")) for r in runs]
    assert stats[0] == stats[1]


@pytest.mark.skipif(not (SHARED_DATA / "multi30k").is_dir(), reason=NO_SHARED_DATA)
def test_second_seed_prepares_identically_on_real_data(tmp_path, run_cli):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run, seed in zip(runs, (1234, 2), strict=True):
        assert run_cli("prepare", REPO / "configs" / "tiny.yaml", "--data-root", SHARED_DATA,
                       "--set", f"run_dir={run}", "--set", f"train.seed={seed}")[0] == 0
    assert _prepared_files(runs[0]) == _prepared_files(runs[1])


def test_run_dirs_prepared_before_the_keys_existed_still_match(tmp_path):
    """A run dir whose config.yaml has no sample_* keys (prepared before the feature) is the
    same preparation for a config with or without sampling: no re-prepare, no refusal."""
    import yaml

    from translator.prepare import ensure_prepared, prepare

    src, tgt = toy_pairs(100, seed=4)
    write_aligned(tmp_path / "data" / "toy", "train", src, tgt)
    write_aligned(tmp_path / "data" / "toy", "dev", src[:5], tgt[:5])
    raw = toy_config(tmp_path / "run")
    prepare(load_config(write_config(tmp_path / "a.yaml", raw)), tmp_path / "data")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    del saved["tokenizer"]["sample_alpha"], saved["tokenizer"]["sample_nbest"]
    write_config(tmp_path / "run" / "config.yaml", saved)
    model = (tmp_path / "run" / "spm.model").read_bytes()
    for alpha in (0.0, 0.3):
        cfg = load_config(tmp_path / "a.yaml", [f"tokenizer.sample_alpha={alpha}"])
        ensure_prepared(cfg, tmp_path / "data")
        assert (tmp_path / "run" / "spm.model").read_bytes() == model
    changed = load_config(tmp_path / "a.yaml", ["tokenizer.vocab_size=50"])
    with pytest.raises(Exception, match="tokenizer.vocab_size"):  # other keys still count
        ensure_prepared(changed, tmp_path / "data")


def test_cli_refuses_bad_sampling_in_one_line(tmp_path, run_cli):
    cfg = write_config(tmp_path / "c.yaml", toy_config(tmp_path / "run"))
    code, out, err = run_cli("train", cfg, "--data-root", tmp_path, "--set",
                             "tokenizer.sample_alpha=2")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "tokenizer.sample_alpha=2.0 is out of range" in err
    assert "Traceback" not in err
