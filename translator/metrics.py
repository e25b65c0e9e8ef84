"""Corpus-level scores: sacreBLEU BLEU and chrF with signatures, lowercased BLEU for
comparison with older papers, and nltk's ``corpus_bleu`` as a cross-check.

No Keras or TensorFlow import.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a


def bleu(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = False) -> float:
    """sacreBLEU (13a tokenization, cased unless ``lowercase``) of detokenized text."""
    return BLEU(lowercase=lowercase).corpus_score(list(hypotheses), [list(references)]).score


def nltk_bleu(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = True) -> float:
    """nltk ``corpus_bleu`` (0-100) on the same 13a tokens sacreBLEU uses, unsmoothed.

    It agrees with sacreBLEU on ordinary text; on corpora of very short sentences it is
    lower, because nltk counts a denominator of 1 for n-gram orders a sentence lacks.
    """
    from nltk.translate.bleu_score import corpus_bleu

    tok = Tokenizer13a()

    def split(text: str) -> list[str]:
        return tok(text.lower() if lowercase else text).split()

    hyps = [split(h) for h in hypotheses]
    refs = [[split(r)] for r in references]
    if not any(hyps):
        return 0.0
    with warnings.catch_warnings():  # nltk warns on zero n-gram matches; the score says it
        warnings.simplefilter("ignore")
        return 100.0 * corpus_bleu(refs, hyps)


def score_all(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Everything ``translator evaluate`` reports, as a JSON-ready dict."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    hyps, refs = list(hypotheses), [list(references)]
    bleu_metric = BLEU()
    bleu_score = bleu_metric.corpus_score(hyps, refs)
    lc_metric = BLEU(lowercase=True)
    lc_score = lc_metric.corpus_score(hyps, refs)
    chrf_metric = CHRF()
    chrf_score = chrf_metric.corpus_score(hyps, refs)
    return {
        "bleu": round(bleu_score.score, 2),
        "bleu_signature": str(bleu_metric.get_signature()),
        "bleu_detail": str(bleu_score),
        "chrf": round(chrf_score.score, 2),
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_lowercase": round(lc_score.score, 2),
        "bleu_lowercase_signature": str(lc_metric.get_signature()),
        "nltk_bleu_lowercase": round(nltk_bleu(hyps, references, lowercase=True), 2),
        "sentences": len(hyps),
        "sacrebleu_version": sacrebleu.__version__,
    }
