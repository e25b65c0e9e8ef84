"""Read parallel text, clean it with counted rules, and split it without leakage.

Pure Python: no TensorFlow. Every line that is dropped is counted under the rule that
dropped it, and every unreadable input raises :class:`CorpusError` naming file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from translator.config import DataConfig
from translator.errors import UserError
from translator.fileio import write_lines_atomic

DATA_ROOT_ENV = "TRANSLATOR_DATA_ROOT"
DEFAULT_DATA_ROOT = "./data"
_SPACES = re.compile(r"\s+")
_INVISIBLE = "\u200b-\u200f\u2060\ufeff"
_EDGES = re.compile(f"^[\\s{_INVISIBLE}]+|[\\s{_INVISIBLE}]+$")

# Scripts written without spaces between words. A Han character is about a word (Chinese
# words average 1.5 characters); kana, Thai, Lao, Tibetan, Myanmar and Khmer words are
# several letters long, so three of their letters count as one word. Hangul is not here:
# Korean separates words with spaces.
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_LETTERS = "\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff"
LETTERS_PER_WORD = 3
# CJK punctuation and full-width punctuation: not a word of its own.
_CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
_HAN_CHAR = re.compile(f"[{_HAN}]")
_LETTER_CHAR = re.compile(f"[{_LETTERS}]")
_NOT_A_WORD = re.compile(f"[{_HAN}{_LETTERS}{_CJK_PUNCT}]")

#: Cleaning rules in the order they are applied; each one's drop count is reported.
CLEANING_RULES = ("empty", "too_long", "ratio", "duplicate")


class CorpusError(UserError):
    """A corpus file is missing, unreadable or inconsistent."""


@dataclass
class Pairs:
    """Parallel sentences: ``src[i]`` translates to ``tgt[i]``."""

    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class CorpusReport:
    """What happened to the training data, for the statistics table."""

    read: int = 0
    not_used: int = 0  # beyond data.max_pairs
    dropped: Counter = field(default_factory=Counter)
    kept: int = 0
    split_off: dict[str, int] = field(default_factory=dict)


@dataclass
class Corpus:
    train: Pairs
    dev: Pairs | None
    test: Pairs | None
    report: CorpusReport


def resolve_data_root(cli_value: str | None = None) -> Path:
    """``--data-root`` if given, else ``$TRANSLATOR_DATA_ROOT``, else ``./data``."""
    return Path(cli_value or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def normalize(line: str) -> str:
    """Strip a BOM, line ends and surrounding whitespace; fold internal runs of spaces.

    Invisible format characters (zero-width space, ZWNJ/ZWJ, direction marks, word
    joiner) are stripped at the ends too; inside a line they stay (ZWJ/ZWNJ shape words
    in e.g. Persian and Hindi). A line with nothing visible (only control, format or
    space characters, U+FFFD or SentencePiece's own ``▁``) is empty: it would encode to
    no subword at all.
    """
    text = _EDGES.sub("", _SPACES.sub(" ", line.replace("\ufeff", "")))
    return text if any(map(_visible, text)) else ""


def _visible(ch: str) -> bool:
    return unicodedata.category(ch)[0] not in "CZ" and ch not in "\ufffd\u2581"


def length_units(sentence: str) -> int:
    """The length in words that the cleaning rules measure, in every script.

    Text in scripts that separate words by spaces counts one per whitespace-separated
    word. In scripts written without spaces, each Han character counts one, and every
    three letters of kana, Thai, Lao, Tibetan, Myanmar or Khmer count one (rounded up);
    CJK punctuation counts nothing. ``"I like tea."`` is 3, ``"我喜欢茶。"`` is 4,
    ``"我用 Python 3"`` is 4, ``"ฉันชอบชา"`` (8 letters) is 3.
    """
    letters = len(_LETTER_CHAR.findall(sentence))
    return (len(_HAN_CHAR.findall(sentence)) + -(-letters // LETTERS_PER_WORD)
            + len(_NOT_A_WORD.sub(" ", sentence).split()))


def _existing(path: Path) -> Path:
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gz
    raise CorpusError(f"{path}: file not found (also looked for {gz.name}); check the data root")


def decode_lines(data: bytes, name: str) -> list[str]:
    """Split ``data`` on ``\\n`` and decode each line as UTF-8, naming ``name:line`` on error.

    Splitting on ``\\n`` only means a stray ``\\r`` or Unicode line separator inside a
    sentence never shifts the alignment between two files.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, raw in enumerate(lines, start=1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise CorpusError(
                f"{name}:{number}: invalid UTF-8 at byte {exc.start}; "
                "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None
    return out


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file (``.gz`` transparently) into lines (see :func:`decode_lines`)."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorpusError(f"{path}: cannot read ({exc})") from None
    return decode_lines(raw, str(path))


def read_aligned(src_path: Path, tgt_path: Path) -> Pairs:
    """Two files with one sentence per line, line *i* of each being a pair."""
    src_path, tgt_path = _existing(src_path), _existing(tgt_path)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise CorpusError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "aligned files must have the same number of lines"
        )
    return Pairs([normalize(s) for s in src], [normalize(t) for t in tgt])


def read_tsv(path: Path, src_column: int, tgt_column: int) -> Pairs:
    """Tab-separated pairs (Tatoeba/Anki style: ``src<TAB>tgt[<TAB>more]``)."""
    path = _existing(path)
    need = max(src_column, tgt_column) + 1
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        cols = line.rstrip("\r").split("\t")
        if len(cols) < need:
            if not line.strip():  # a blank line is an empty pair, counted by clean()
                src.append("")
                tgt.append("")
                continue
            raise CorpusError(
                f"{path}:{number}: expected at least {need} tab-separated columns, found "
                f"{len(cols)}; check data.format, data.src_column and data.tgt_column"
            )
        src.append(normalize(cols[src_column]))
        tgt.append(normalize(cols[tgt_column]))
    return Pairs(src, tgt)


def read_split(cfg: DataConfig, root: Path, name: str) -> Pairs:
    """Read the split whose path is ``cfg.<name>`` (train / dev / test)."""
    rel = getattr(cfg, name)
    base = root / rel
    if cfg.format == "tsv":
        return read_tsv(base, cfg.src_column, cfg.tgt_column)
    return read_aligned(
        base.with_name(f"{base.name}.{cfg.src_lang}"),
        base.with_name(f"{base.name}.{cfg.tgt_lang}"),
    )


def clean(pairs: Pairs, cfg: DataConfig) -> tuple[Pairs, Counter]:
    """Apply the cleaning rules in order; return kept pairs and drops per rule."""
    dropped: Counter = Counter({rule: 0 for rule in CLEANING_RULES})
    seen: set[tuple[str, str]] = set()
    src_out, tgt_out = [], []
    for s, t in zip(pairs.src, pairs.tgt, strict=True):
        if not s or not t:
            dropped["empty"] += 1
            continue
        ns, nt = length_units(s), length_units(t)
        if ns > cfg.max_words or nt > cfg.max_words:
            dropped["too_long"] += 1
            continue
        longer, shorter = max(ns, nt), min(ns, nt)
        if longer > cfg.min_ratio_words and longer > cfg.max_ratio * shorter:
            dropped["ratio"] += 1
            continue
        if cfg.dedup:
            key = (s, t)
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
        src_out.append(s)
        tgt_out.append(t)
    return Pairs(src_out, tgt_out), dropped


def _group_key(sentence: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\t{sentence}".encode()).hexdigest()


def sentence_groups(src: Sequence[str], tgt: Sequence[str]) -> list[list[int]]:
    """Group pair indices so that pairs sharing a source or a target sentence are together.

    The groups are the connected components of the graph whose nodes are the source and
    the target sentences (two separate sides; exact strings) and whose edges are the
    pairs: ``a-x, b-x, b-y`` is one group although ``a-x`` and ``b-y`` share nothing.
    A split that keeps every group on one side leaks neither a source nor a target
    sentence. Each group lists its indices in ascending order; groups are ordered by
    their first index.
    """
    parent = list(range(len(src)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for side in (src, tgt):
        first: dict[str, int] = {}
        for i, sentence in enumerate(side):
            j = first.setdefault(sentence, i)
            if j != i:
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the smallest index stays the root
    groups: dict[int, list[int]] = {}
    for i in range(len(src)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def split_without_leakage(
    pairs: Pairs, dev_size: int, test_size: int, seed: int
) -> tuple[Pairs, Pairs, Pairs]:
    """Deterministic train/dev/test split in which no dev/test sentence occurs in train.

    Pairs that share a source or a target sentence form one group (see
    :func:`sentence_groups`) and every group lands in one split, so no dev or test
    source sentence and no dev or test target sentence is ever seen in training. Groups
    are ordered by a seeded hash of their smallest source sentence (code-point order);
    test takes groups until it has ``test_size`` pairs, then dev, the rest is train.
    Lines keep their corpus order within each split.
    """
    groups = sentence_groups(pairs.src, pairs.tgt)
    order = sorted(groups, key=lambda g: _group_key(min(pairs.src[i] for i in g), seed))
    parts: list[list[int]] = [[], [], []]  # test, dev, train
    targets = [test_size, dev_size]
    part = 0
    for group in order:
        while part < 2 and len(parts[part]) >= targets[part]:
            part += 1
        parts[part].extend(group)

    def take(idx: Iterable[int]) -> Pairs:
        idx = sorted(idx)
        return Pairs([pairs.src[i] for i in idx], [pairs.tgt[i] for i in idx])

    test, dev, train = (take(p) for p in parts)
    return train, dev, test


def load_corpus(cfg: DataConfig, root: Path) -> Corpus:
    """Read, limit, clean and (if needed) split the configured corpus."""
    report = CorpusReport()
    train = read_split(cfg, root, "train")
    report.read = len(train)
    if cfg.max_pairs is not None and len(train) > cfg.max_pairs:
        report.not_used = len(train) - cfg.max_pairs
        train = Pairs(train.src[: cfg.max_pairs], train.tgt[: cfg.max_pairs])
    train, report.dropped = clean(train, cfg)
    if not len(train):
        raise CorpusError(
            f"{root / cfg.train}: no usable sentence pairs after cleaning "
            f"(read {report.read}, dropped {dict(report.dropped)}); check the file and data.* limits"
        )
    dev = read_split(cfg, root, "dev") if cfg.dev else None
    test = read_split(cfg, root, "test") if cfg.test else None
    need_dev = dev is None and cfg.dev_size > 0
    need_test = test is None and cfg.test_size > 0
    if need_dev or need_test:
        train, split_dev, split_test = split_without_leakage(
            train,
            cfg.dev_size if need_dev else 0,
            cfg.test_size if need_test else 0,
            cfg.split_seed,
        )
        if need_dev:
            dev = split_dev
            report.split_off["dev"] = len(split_dev)
        if need_test:
            test = split_test
            report.split_off["test"] = len(split_test)
        if not len(train):
            raise CorpusError(
                f"{root / cfg.train}: nothing left for training after splitting off dev/test; "
                "lower data.dev_size / data.test_size"
            )
    report.kept = len(train)
    return Corpus(train=train, dev=dev, test=test, report=report)


def write_pairs(pairs: Pairs, src_path: Path, tgt_path: Path) -> None:
    """Write aligned files atomically (temp file + rename)."""
    for path, lines in ((src_path, pairs.src), (tgt_path, pairs.tgt)):
        write_lines_atomic(path, lines)
