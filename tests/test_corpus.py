import gzip

import pytest

from translator.config import DataConfig
from translator.corpus import (
    CorpusError,
    Pairs,
    clean,
    load_corpus,
    normalize,
    read_aligned,
    read_tsv,
    resolve_data_root,
    sentence_groups,
    split_without_leakage,
)


def test_read_aligned_handles_bom_crlf_whitespace_and_gz(tmp_path):
    (tmp_path / "a.de").write_bytes("\ufeffEin  Hund.\r\n  Zwei\tKatzen \r\n".encode())
    with gzip.open(tmp_path / "a.en.gz", "wb") as f:
        f.write(b"A dog.\nTwo cats.\n")
    pairs = read_aligned(tmp_path / "a.de", tmp_path / "a.en")  # falls back to .gz
    assert pairs.src == ["Ein Hund.", "Zwei Katzen"]
    assert pairs.tgt == ["A dog.", "Two cats."]


def test_read_aligned_mismatched_counts_names_both_files(tmp_path):
    (tmp_path / "a.de").write_text("x\ny\nz\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"a\.de has 3 lines but .*a\.en has 2"):
        read_aligned(tmp_path / "a.de", tmp_path / "a.en")


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "a.de").write_bytes(b"ok\nbad \xff\xfe here\n")
    (tmp_path / "a.en").write_text("ok\nok\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"a\.de:2: invalid UTF-8"):
        read_aligned(tmp_path / "a.de", tmp_path / "a.en")


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="file not found"):
        read_aligned(tmp_path / "no.de", tmp_path / "no.en")


def test_read_tsv_columns_and_errors(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("Go.\tVe.\tCC-BY #1\nHi.\tHola.\tCC-BY #2\n\n", encoding="utf-8")
    pairs = read_tsv(path, 1, 0)
    assert pairs.src == ["Ve.", "Hola.", ""]
    assert pairs.tgt == ["Go.", "Hi.", ""]
    path.write_text("Go.\tVe.\nbroken line\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"p\.tsv:2: expected at least 2 tab-separated columns, found 1"):
        read_tsv(path, 0, 1)


def test_clean_counts_every_rule():
    cfg = DataConfig(train="x", max_words=5, max_ratio=2.0, min_ratio_words=2)
    pairs = Pairs(
        ["a b", "", "a b c d e f", "a b c d", "a b", "x y"],
        ["c d", "y", "z", "e", "c d", "z w"],
    )
    kept, dropped = clean(pairs, cfg)
    assert kept.src == ["a b", "x y"]
    assert dict(dropped) == {"empty": 1, "too_long": 1, "ratio": 1, "duplicate": 1}
    assert len(kept) + sum(dropped.values()) == len(pairs)


def test_lines_of_only_invisible_characters_are_empty(tmp_path):
    # zero-width space, word joiner, BOM, direction marks: nothing a reader can see
    (tmp_path / "a.de").write_text("Ein Hund.\n\u200b\n \u2060\ufeff \nZwei\u200b\n"
                                   "\u200eKatzen\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("A dog.\nA cat.\nTwo.\n\u200b\u200b\nCats\n",
                                   encoding="utf-8")
    pairs = read_aligned(tmp_path / "a.de", tmp_path / "a.en")
    assert pairs.src == ["Ein Hund.", "", "", "Zwei", "Katzen"]
    assert pairs.tgt == ["A dog.", "A cat.", "Two.", "", "Cats"]
    kept, dropped = clean(pairs, DataConfig(train="x"))
    assert kept.src == ["Ein Hund.", "Katzen"] and dropped["empty"] == 3
    # inside a word ZWNJ / ZWJ stay: they change how the word is written
    assert normalize("\u200bمی\u200cخواهم\u200b") == "می\u200cخواهم"
    assert normalize("क्\u200dष") == "क्\u200dष"


def test_split_has_no_source_leakage_and_is_deterministic():
    src = [f"s{i % 50}" for i in range(300)]  # every source appears 6 times
    tgt = [f"t{i}" for i in range(300)]
    train, dev, test = split_without_leakage(Pairs(src, tgt), dev_size=30, test_size=30, seed=7)
    assert len(train) + len(dev) + len(test) == 300
    assert not set(train.src) & set(dev.src)
    assert not set(train.src) & set(test.src)
    assert not set(dev.src) & set(test.src)
    assert len(dev) >= 30 and len(test) >= 30
    again = split_without_leakage(Pairs(src, tgt), dev_size=30, test_size=30, seed=7)
    assert again[2].src == test.src


def test_sentence_groups_are_connected_over_both_sides():
    # a-x, b-x share a target; b-y shares b with b-x; c-y shares y: one chain. d-z alone.
    src = ["a", "d", "b", "b", "c", "e"]
    tgt = ["x", "z", "x", "y", "y", "a"]  # "a" as a target is not the source "a"
    assert sentence_groups(src, tgt) == [[0, 2, 3, 4], [1], [5]]


def test_split_has_no_target_leakage_either():
    # 60 targets, each translated from two different sources: grouping by source alone
    # puts one pair of a target in dev/test and the other in train.
    src = [f"s{i}" for i in range(120)] + [f"u{i}" for i in range(80)]
    tgt = [f"t{i % 60}" for i in range(120)] + [f"v{i}" for i in range(80)]
    pairs = Pairs(src, tgt)
    train, dev, test = split_without_leakage(pairs, dev_size=20, test_size=20, seed=3)
    assert len(train) + len(dev) + len(test) == 200
    assert len(dev) >= 20 and len(test) >= 20
    for held_out in (dev, test):
        assert not set(held_out.src) & set(train.src)
        assert not set(held_out.tgt) & set(train.tgt)
    assert not set(dev.tgt) & set(test.tgt)
    # every pair is kept, in corpus order within each split
    for part in (train, dev, test):
        idx = [src.index(s) for s in part.src]
        assert idx == sorted(idx) and [tgt[i] for i in idx] == part.tgt


def test_load_corpus_splits_and_reports(tmp_path):
    from conftest import toy_pairs, write_aligned

    src, tgt = toy_pairs(200)
    write_aligned(tmp_path / "toy", "train", src + ["", src[0]], tgt + ["y", tgt[0]])
    cfg = DataConfig(src_lang="xx", tgt_lang="yy", train="toy/train", dev_size=20, test_size=10)
    corpus = load_corpus(cfg, tmp_path)
    assert corpus.report.read == 202
    assert corpus.report.dropped["empty"] == 1 and corpus.report.dropped["duplicate"] == 1
    assert len(corpus.dev) >= 20 and len(corpus.test) >= 10
    assert len(corpus.train) + len(corpus.dev) + len(corpus.test) == 200
    assert corpus.report.kept == len(corpus.train)


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "e.xx").write_text("\n\n", encoding="utf-8")
    (tmp_path / "e.yy").write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no usable sentence pairs"):
        load_corpus(DataConfig(src_lang="xx", tgt_lang="yy", train="e"), tmp_path)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("TRANSLATOR_DATA_ROOT", raising=False)
    assert str(resolve_data_root()) == "data"
    monkeypatch.setenv("TRANSLATOR_DATA_ROOT", str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert str(resolve_data_root("/elsewhere")) == "/elsewhere"


def test_length_rules_count_words_in_scripts_without_spaces():
    from translator.corpus import length_units

    assert length_units("I like green tea.") == 4
    assert length_units("我喜欢绿茶。") == 5  # one per Han character, punctuation is free
    assert length_units("我用 Python 3 写代码") == 7
    assert length_units("トムは行った。") == 3  # 5 kana letters -> 2, 1 Han character
    assert length_units("ฉันชอบชา") == 3  # 8 Thai letters, 3 per word
    # a Chinese sentence is one whitespace "word": the ratio rule used to drop the pair
    cfg = DataConfig(train="x", max_ratio=3.0, min_ratio_words=3)
    pairs = Pairs(["我们明天早上八点在学校门口见面。", "他很高兴。"],
                  ["We will meet at the school gate at eight tomorrow morning.", "He is happy."])
    kept, dropped = clean(pairs, cfg)
    assert len(kept) == 2 and dropped["ratio"] == 0
    # and a real length mismatch is still caught in these scripts
    kept, dropped = clean(Pairs(["好。"], ["Yes, of course, I will be very glad to do that."]), cfg)
    assert len(kept) == 0 and dropped["ratio"] == 1
