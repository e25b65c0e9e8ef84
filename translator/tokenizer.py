"""SentencePiece subword models: training, loading, encoding.

Training batches and translation inputs are both encoded by :meth:`Tokenizer.encode`
(the sentencepiece library), so both paths always produce the same ids.

Owns the special ids ``PAD=0 UNK=1 BOS=2 EOS=3`` (PAD is 0 so that Keras'
``Embedding(mask_zero=True)`` masks padding). Every loaded model is checked for them.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from translator.config import TokenizerConfig
from translator.errors import UserError
from translator.fileio import write_bytes_atomic

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
JOINT_FILE = "spm.model"
SRC_FILE = "spm.src.model"
TGT_FILE = "spm.tgt.model"


class TokenizerError(UserError):
    """A tokenizer model is missing, unreadable or has the wrong special ids."""


class Tokenizer:
    """One SentencePiece model, usable from Python and inside a TF graph."""

    def __init__(self, proto: bytes, name: str = "<memory>") -> None:
        self.proto = proto
        self.name = name
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(f"{name}: not a SentencePiece model ({exc})") from None
        got = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise TokenizerError(
                f"{name}: special ids pad/unk/bos/eos are {got}, expected "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; retrain it with `translator prepare`"
            )

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        try:
            return cls(Path(path).read_bytes(), name=str(path))
        except FileNotFoundError:
            raise TokenizerError(f"{path}: tokenizer model not found") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int)

    def encode_pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenize, ignoring PAD/BOS/EOS (SentencePiece drops control symbols)."""
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


@dataclass
class Tokenizers:
    """The source and target tokenizers (the same object when joint)."""

    src: Tokenizer
    tgt: Tokenizer

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    def save(self, run_dir: Path) -> None:
        if self.joint:
            write_bytes_atomic(run_dir / JOINT_FILE, self.src.proto)
        else:
            write_bytes_atomic(run_dir / SRC_FILE, self.src.proto)
            write_bytes_atomic(run_dir / TGT_FILE, self.tgt.proto)

    @staticmethod
    def exists(run_dir: Path) -> bool:
        return (run_dir / JOINT_FILE).is_file() or (
            (run_dir / SRC_FILE).is_file() and (run_dir / TGT_FILE).is_file()
        )

    @classmethod
    def load(cls, run_dir: Path) -> Tokenizers:
        run_dir = Path(run_dir)
        if (run_dir / JOINT_FILE).is_file():
            tok = Tokenizer.load(run_dir / JOINT_FILE)
            return cls(tok, tok)
        if (run_dir / SRC_FILE).is_file() or (run_dir / TGT_FILE).is_file():
            return cls(Tokenizer.load(run_dir / SRC_FILE), Tokenizer.load(run_dir / TGT_FILE))
        raise TokenizerError(
            f"{run_dir}: no tokenizer ({JOINT_FILE} or {SRC_FILE} + {TGT_FILE}); "
            "run `translator prepare CONFIG` first"
        )


def train_sentencepiece(
    sentences: Sequence[str], vocab_size: int, cfg: TokenizerConfig,
    key: str = "tokenizer.vocab_size",
) -> Tokenizer:
    """Train one SentencePiece model in memory on (a seeded sample of) ``sentences``.

    ``vocab_size`` (the config key ``key``) is a soft limit: on a corpus too small for
    it, SentencePiece makes the largest vocabulary it can instead of failing. A
    vocabulary too small for the corpus's characters raises :class:`TokenizerError`.
    """
    sentences = [s for s in sentences if s]
    if len(sentences) > cfg.max_sentences:
        sentences = random.Random(cfg.seed).sample(sentences, cfg.max_sentences)
    if not sentences:
        raise TokenizerError("no sentences to train the tokenizer on")
    model = io.BytesIO()
    try:
        _train(sentences, model, vocab_size, cfg)
    except RuntimeError as exc:
        raise _training_error(exc, key, vocab_size, cfg) from None
    return Tokenizer(model.getvalue())


def _training_error(exc: RuntimeError, key: str, vocab_size: int,
                    cfg: TokenizerConfig) -> TokenizerError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    message = re.sub(r"^\w+: \S+\(\d+\) \[.*?\] ", "", message)  # SentencePiece's source line
    need = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if need:
        return TokenizerError(
            f"{key}={vocab_size} is too small: this corpus needs at least {need.group(1)} "
            "pieces (its characters plus the 4 special ids); raise it "
            f"or lower tokenizer.character_coverage={cfg.character_coverage}"
        )
    return TokenizerError(f"SentencePiece could not train a tokenizer with {key}={vocab_size}: "
                          f"{message}")


def _train(sentences: Sequence[str], model: io.BytesIO, vocab_size: int,
           cfg: TokenizerConfig) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type=cfg.type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=cfg.character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=2,
        minloglevel=2,
    )


def train_tokenizers(src: Sequence[str], tgt: Sequence[str], cfg: TokenizerConfig) -> Tokenizers:
    if cfg.joint:
        tok = train_sentencepiece([*src, *tgt], cfg.vocab_size, cfg)
        return Tokenizers(tok, tok)
    return Tokenizers(
        train_sentencepiece(src, cfg.src_vocab_size or cfg.vocab_size, cfg,
                            _size_key("src", cfg.src_vocab_size)),
        train_sentencepiece(tgt, cfg.tgt_vocab_size or cfg.vocab_size, cfg,
                            _size_key("tgt", cfg.tgt_vocab_size)),
    )


def _size_key(side: str, value: int | None) -> str:
    return f"tokenizer.{side}_vocab_size" if value is not None else "tokenizer.vocab_size"
