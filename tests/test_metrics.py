import random

import pytest
from conftest import NO_SHARED_DATA, SHARED_DATA

from translator.metrics import bleu, nltk_bleu, score_all


def test_identical_text_scores_100():
    refs = ["A man is riding a bike down the road.", "Two dogs play in the snow."]
    result = score_all(refs, refs)
    assert result["bleu"] == 100.0 and result["chrf"] == 100.0
    assert result["bleu_lowercase"] == 100.0 and result["nltk_bleu_lowercase"] == 100.0
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_lowercase_bleu_ignores_case_only():
    refs = ["A man is riding a bike down the road."]
    hyps = ["a MAN is riding a bike down the road."]
    assert bleu(hyps, refs) < 100.0
    assert bleu(hyps, refs, lowercase=True) == pytest.approx(100.0)


def _corrupt(sentences, seed):
    rng = random.Random(seed)
    out = []
    for s in sentences:
        words = s.split()
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(words))
            words[i] = rng.choice(["a", "the", "man", "dog", "blue", "is"])
        if rng.random() < 0.3 and len(words) > 3:
            del words[rng.randrange(len(words))]
        out.append(" ".join(words))
    return out


@pytest.mark.skipif(not (SHARED_DATA / "multi30k" / "val.en").is_file(), reason=NO_SHARED_DATA)
def test_nltk_and_sacrebleu_agree_on_real_text():
    refs = (SHARED_DATA / "multi30k" / "val.en").read_text(encoding="utf-8").splitlines()
    hyps = _corrupt(refs, seed=0)
    ours = bleu(hyps, refs, lowercase=True)
    theirs = nltk_bleu(hyps, refs, lowercase=True)
    assert 20 < ours < 90
    assert theirs == pytest.approx(ours, abs=0.5)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        score_all(["a"], ["a", "b"])


def test_chinese_targets_are_scored_with_the_zh_tokenizer():
    from translator.metrics import bleu_tokenizer

    refs = ["我喜欢喝绿茶。", "他明天去北京。"]
    hyps = ["我喜欢喝红茶。", "他明天去北京。"]
    # 13a sees each unsegmented sentence as one word: the first pair scores nothing
    assert bleu(hyps[:1], refs[:1]) == 0.0
    result = score_all(hyps, refs, target_lang="zh")
    assert "|tok:zh|" in result["bleu_signature"] and result["bleu_tokenizer"] == "zh"
    assert result["bleu"] == round(bleu(hyps, refs, tokenize="zh"), 2)
    assert 0 < bleu(hyps[:1], refs[:1], tokenize="zh") < 100
    assert 0 < result["nltk_bleu_lowercase"] < 100
    assert [bleu_tokenizer(x)[0] for x in ("zh", "zh-TW", "cmn", "en", "de")] == [
        "zh", "zh", "zh", "13a", "13a"]
    tok, note = bleu_tokenizer("ja")  # ja-mecab where installed, else char with a note
    assert (tok, note is None) in (("ja-mecab", True), ("char", False))
    assert score_all(hyps, refs, target_lang="en")["bleu_signature"].count("tok:13a") == 1
    tok, note = bleu_tokenizer("th")  # no sacreBLEU word tokenizer: characters, and it says so
    assert tok == "char" and "Thai" in note
    assert "bleu_tokenizer_note" in score_all(["ฉันชอบชา"], ["ฉันชอบกาแฟ"], target_lang="th")


def test_evaluate_scores_a_chinese_target_with_zh(memorized_run, run_cli, tmp_path):
    import json
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(memorized_run["run_dir"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    cfg["data"]["tgt_lang"] = "zh"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (tmp_path / "s.txt").write_text("\n".join(memorized_run["src"][:5]) + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("我喜欢喝绿茶。\n" * 5, encoding="utf-8")
    code, out, err = run_cli("evaluate", run, "--src", tmp_path / "s.txt", "--ref",
                             tmp_path / "r.txt")
    assert code == 0, err
    assert "|tok:zh|" in json.loads(out)["bleu_signature"]
