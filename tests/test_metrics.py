import random

import pytest
from conftest import SHARED_DATA

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


@pytest.mark.skipif(not (SHARED_DATA / "multi30k" / "val.en").is_file(), reason="no shared data")
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
