"""On the real corpora in ../shared/data, reached through the data root like a user."""

import json
import shutil
import time

import pytest
from conftest import NO_SHARED_DATA, REPO, SHARED_DATA

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SHARED_DATA / "multi30k").is_dir(), reason=NO_SHARED_DATA),
]


def test_prepare_multi30k_en_de(run_cli, tmp_path):
    started = time.perf_counter()
    code, out, err = run_cli("prepare", REPO / "configs" / "multi30k-en-de.yaml",
                             "--data-root", SHARED_DATA, "--set", f"run_dir={tmp_path / 'run'}")
    assert code == 0, err
    assert time.perf_counter() - started < 120
    stats = json.loads((tmp_path / "run" / "prepare.json").read_text())
    assert stats["pairs_read"] == 29000
    assert stats["pairs"]["dev"] == 1014 and stats["pairs"]["test"] == 1000
    assert stats["pairs"]["train"] + sum(stats["dropped"].values()) == 29000
    assert stats["dropped"]["duplicate"] == 3  # the corpus README lists 3 repeated pairs
    assert "dropped: duplicate" in out


def test_spa_eng_split_reproduces_the_shared_split(tmp_path):
    folder = tmp_path / "spa-eng"
    folder.mkdir()
    shutil.copy(SHARED_DATA / "spa-eng" / "spa.txt", folder / "spa.txt")
    from translator.download import spa_eng_split

    spa_eng_split(folder)
    for name in ("train.en", "train.es", "dev.en", "dev.es", "test.en", "test.es"):
        assert (folder / name).read_bytes() == (SHARED_DATA / "spa-eng" / name).read_bytes(), name


def test_tiny_config_trains_translates_and_evaluates(run_cli, tmp_path):
    run = tmp_path / "tiny"
    started = time.perf_counter()
    code, out, err = run_cli("-q", "train", REPO / "configs" / "tiny.yaml", "--data-root",
                             SHARED_DATA, "--set", f"run_dir={run}")
    assert code == 0, err
    assert time.perf_counter() - started < 180
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < records[0]["loss"]
    code, out, err = run_cli("evaluate", run, "--beam-size", "2")
    assert code == 0, err
    result = json.loads(out)
    assert result["sentences"] == 1000
    assert len((run / "eval" / "test.hyp").read_text(encoding="utf-8").split("\n")) == 1001


def test_training_and_translation_encode_every_line_identically(run_cli, tmp_path):
    """The training batches and Translator's inputs hold the same ids for every line of
    spa-eng train.es (tensorflow-text used to split digit runs differently: '0 00' vs '00 0')."""
    import numpy as np

    from translator.pipeline import filter_by_length, make_dataset
    from translator.prepare import RunPaths, read_prepared_split
    from translator.tokenizer import EOS_ID, PAD_ID, Tokenizers
    from translator.translator import Translator

    run = tmp_path / "run"
    code, _, err = run_cli("-q", "prepare", REPO / "configs" / "spa-eng.yaml", "--data-root",
                           SHARED_DATA, "--set", f"run_dir={run}")
    assert code == 0, err
    toks = Tokenizers.load(run)
    pairs = read_prepared_split(RunPaths(run), "train")
    assert len(pairs) > 100_000
    kept, dropped, _, _ = filter_by_length(pairs, toks, max_len=1000)
    assert dropped == 0
    ds = make_dataset(kept, max_len=1000, batch_tokens=4096, shuffle=False, bucketing=False,
                      fixed_batch_size=512)
    in_training = [row[row != PAD_ID].tolist() for inputs, _, _ in ds
                   for row in inputs["source_ids"].numpy()]
    for_translation = Translator(None, toks).encode_sources(pairs.src)
    assert len(in_training) == len(for_translation) == len(pairs)
    differ = [i for i, (a, b) in enumerate(zip(in_training, for_translation, strict=True))
              if a != b]
    assert not differ, [pairs.src[i] for i in differ[:5]]
    assert all(ids[-1] == EOS_ID for ids in for_translation)
    assert np.mean([len(ids) for ids in for_translation]) > 5


def test_spa_eng_en_es_is_spa_eng_reversed(run_cli, tmp_path):
    """configs/spa-eng-en-es.yaml reads the same fixed split, English as the source."""
    import yaml

    forward = yaml.safe_load((REPO / "configs" / "spa-eng.yaml").read_text(encoding="utf-8"))
    reverse = yaml.safe_load((REPO / "configs" / "spa-eng-en-es.yaml").read_text(encoding="utf-8"))
    assert (reverse["data"]["src_lang"], reverse["data"]["tgt_lang"]) == ("en", "es")
    for section in ("data", "tokenizer", "model", "train", "decode"):
        swapped = dict(forward[section])
        if section == "data":
            swapped.update(src_lang=forward["data"]["tgt_lang"],
                           tgt_lang=forward["data"]["src_lang"])
        assert reverse[section] == swapped, section
    run = tmp_path / "run"
    code, _, err = run_cli("-q", "prepare", REPO / "configs" / "spa-eng-en-es.yaml",
                           "--data-root", SHARED_DATA, "--set", f"run_dir={run}",
                           "--set", "data.max_pairs=3000", "--set", "tokenizer.vocab_size=1000")
    assert code == 0, err
    for split in ("dev", "test"):
        assert (run / "corpus" / f"{split}.src").read_text(encoding="utf-8") == (
            SHARED_DATA / "spa-eng" / f"{split}.en").read_text(encoding="utf-8")
        assert (run / "corpus" / f"{split}.tgt").read_text(encoding="utf-8") == (
            SHARED_DATA / "spa-eng" / f"{split}.es").read_text(encoding="utf-8")
    stats = json.loads((run / "prepare.json").read_text())
    assert stats["pairs"] == {"train": 3000 - sum(stats["dropped"].values()),
                              "dev": 2470, "test": 2350}
