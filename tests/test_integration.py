"""On the real corpora in ../shared/data, reached through the data root like a user."""

import json
import shutil
import time

import pytest
from conftest import REPO, SHARED_DATA

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SHARED_DATA / "multi30k").is_dir(), reason="no ../shared/data"),
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
