"""Typed, strict configuration: YAML on disk -> frozen dataclasses.

Precedence: dataclass defaults < YAML file < ``--set section.key=value`` overrides.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` with a
message naming the full key path. This module imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from translator.errors import UserError


class ConfigError(UserError):
    """A configuration problem the user can fix; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus is and how it is cleaned and split.

    Paths are relative to the data root. ``format: aligned`` reads ``<prefix>.<lang>``
    (or ``<prefix>.<lang>.gz``) for both languages; ``format: tsv`` reads one file with
    the source and target in the columns ``src_column`` / ``tgt_column`` (0-based).
    ``dev`` / ``test`` are optional: when missing they are split off ``train``, with
    pairs that share a source or a target sentence kept together, so that no dev/test
    source and no dev/test target sentence occurs in training.
    The cleaning limits ``max_words`` / ``max_ratio`` / ``min_ratio_words`` count words as
    :func:`translator.corpus.length_units` does (Han characters count one each, kana
    and Thai-like letters one per three, other scripts by whitespace).
    """

    src_lang: str = "src"
    tgt_lang: str = "tgt"
    format: Literal["aligned", "tsv"] = "aligned"
    train: str = ""
    dev: str | None = None
    test: str | None = None
    src_column: int = 0
    tgt_column: int = 1
    max_pairs: int | None = None
    max_words: int = 100
    max_ratio: float = 3.0
    min_ratio_words: int = 3
    dedup: bool = True
    dev_size: int = 1000
    test_size: int = 1000
    split_seed: int = 1234

    def __post_init__(self) -> None:
        _require(bool(self.train), "data.train", self.train, "a path relative to the data root")
        _range("data.src_column", self.src_column, 0, None)
        _range("data.tgt_column", self.tgt_column, 0, None)
        if self.format == "tsv" and self.src_column == self.tgt_column:
            raise ConfigError(
                f"data.src_column and data.tgt_column are both {self.src_column}; "
                "choose two different TSV columns"
            )
        if self.max_pairs is not None:
            _range("data.max_pairs", self.max_pairs, 1, None)
        _range("data.max_words", self.max_words, 1, None)
        _range("data.max_ratio", self.max_ratio, 1.0, None)
        _range("data.min_ratio_words", self.min_ratio_words, 0, None)
        _range("data.dev_size", self.dev_size, 0, None)
        _range("data.test_size", self.test_size, 0, None)


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece settings. ``joint`` shares one model between both languages.

    ``sample_alpha`` > 0 turns on subword regularization for training only: every epoch
    segments each training sentence anew by sampling (dev, test, translate and export stay
    deterministic). A unigram model samples from its lattice: ``sample_nbest`` -1 samples
    from all segmentations, ``n`` in [2, 512] from the ``n`` best, and ``sample_alpha`` is the
    smoothing exponent (small = closer to uniform). A BPE model does BPE-dropout:
    ``sample_alpha`` is the probability of dropping a merge and ``sample_nbest`` only has to
    be -1 or >= 2 (sentencepiece's semantics). ``sample_nbest`` 0 or 1 means "no sampling"
    in sentencepiece, so it is refused together with ``sample_alpha`` > 0.
    These two keys change no prepared file: prepare ignores them and a resume may change them.
    """

    type: Literal["unigram", "bpe"] = "unigram"
    joint: bool = True
    vocab_size: int = 8000
    src_vocab_size: int | None = None
    tgt_vocab_size: int | None = None
    character_coverage: float = 1.0
    max_sentences: int = 1_000_000
    seed: int = 1234
    sample_alpha: float = 0.0
    sample_nbest: int = -1

    def __post_init__(self) -> None:
        _range("tokenizer.vocab_size", self.vocab_size, 8, None)
        _range("tokenizer.sample_alpha", self.sample_alpha, 0.0, 1.0)
        if not -1 <= self.sample_nbest <= 512:  # sentencepiece refuses more than 512 best
            raise ConfigError(
                f"tokenizer.sample_nbest={self.sample_nbest} is out of range; use -1 (sample "
                "from all segmentations) or a number of best segmentations from 2 to 512"
            )
        if self.sample_alpha > 0 and self.sample_nbest in (0, 1):
            raise ConfigError(
                f"tokenizer.sample_nbest={self.sample_nbest} turns sampling off (sentencepiece "
                f"keeps the best segmentation) although tokenizer.sample_alpha="
                f"{self.sample_alpha} > 0; use -1 (all segmentations) or >= 2, or alpha 0"
            )
        for key in ("src_vocab_size", "tgt_vocab_size"):
            value = getattr(self, key)
            if value is not None:
                _range(f"tokenizer.{key}", value, 8, None)
        _range("tokenizer.character_coverage", self.character_coverage, 0.9, 1.0)
        _range("tokenizer.max_sentences", self.max_sentences, 100, None)


@dataclass(frozen=True)
class ModelConfig:
    """Network sizes. The encoder is bidirectional with ``hidden_size // 2`` units
    per direction, so its outputs have ``hidden_size`` features like the decoder."""

    embed_dim: int = 256
    hidden_size: int = 512
    encoder_layers: int = 1
    decoder_layers: int = 1
    attention: Literal["bahdanau", "luong_dot", "luong_general"] = "bahdanau"
    attention_units: int | None = None
    input_feeding: bool = True
    dropout: float = 0.2
    embed_dropout: float = 0.1
    word_dropout: float = 0.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        _range("model.embed_dim", self.embed_dim, 1, None)
        _range("model.hidden_size", self.hidden_size, 2, None)
        if self.hidden_size % 2:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be even "
                "(the bidirectional encoder uses hidden_size // 2 units per direction)"
            )
        _range("model.encoder_layers", self.encoder_layers, 1, 16)
        _range("model.decoder_layers", self.decoder_layers, 1, 16)
        if self.attention_units is not None:
            _range("model.attention_units", self.attention_units, 1, None)
        _range("model.dropout", self.dropout, 0.0, 0.95)
        _range("model.embed_dropout", self.embed_dropout, 0.0, 0.95)
        _range("model.word_dropout", self.word_dropout, 0.0, 0.95)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batching and checkpointing."""

    epochs: int = 20
    batch_tokens: int = 4096
    max_len: int = 100
    learning_rate: float = 1e-3
    lr_schedule: Literal["constant", "inverse_sqrt", "linear_decay"] = "constant"
    warmup_steps: int = 500
    decay_steps: int = 10000  # linear_decay length; 0 = until the last epoch ends
    min_learning_rate: float = 1e-5
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    patience: int = 5
    keep_checkpoints: int = 5  # newest epoch-N.keras files kept (for `translator average`)
    seed: int = 1234
    shuffle_buffer: int = 200_000
    dev_bleu_sentences: int | None = None
    jit_compile: bool = False
    # Keras mixed precision: variables stay float32, layers compute in the given type.
    # true is read as "float16" (with loss scaling; for GPUs). "bfloat16" needs no loss
    # scaling and is fast on CPUs with native bfloat16 (AVX512_BF16 / AMX) and recent GPUs.
    mixed_precision: bool | Literal["float16", "bfloat16"] = False
    bucketing: bool = True
    fixed_batch_size: int = 64
    # tf.distribute: auto = multi_worker when TF_CONFIG is set, mirrored when more than one
    # GPU is visible, none (plain Keras fit) otherwise
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    distribute_timeout: float = 120.0  # seconds a worker waits for the others at start-up

    def __post_init__(self) -> None:
        _range("train.epochs", self.epochs, 1, None)
        _range("train.batch_tokens", self.batch_tokens, 16, None)
        _range("train.max_len", self.max_len, 2, None)
        if self.batch_tokens < self.max_len + 2:
            raise ConfigError(
                f"train.batch_tokens={self.batch_tokens} is smaller than one sentence of "
                f"train.max_len={self.max_len} (+2); raise batch_tokens or lower max_len"
            )
        _range("train.learning_rate", self.learning_rate, 0.0, 10.0, open_low=True)
        _range("train.warmup_steps", self.warmup_steps, 0, None)
        _range("train.decay_steps", self.decay_steps, 0, None)
        _range("train.min_learning_rate", self.min_learning_rate, 0.0, None)
        _range("train.clip_norm", self.clip_norm, 0.0, None)
        _range("train.label_smoothing", self.label_smoothing, 0.0, 0.99)
        _range("train.patience", self.patience, 1, None)
        _range("train.keep_checkpoints", self.keep_checkpoints, 1, None)
        _range("train.shuffle_buffer", self.shuffle_buffer, 1, None)
        if self.dev_bleu_sentences is not None:
            _range("train.dev_bleu_sentences", self.dev_bleu_sentences, 1, None)
        _range("train.fixed_batch_size", self.fixed_batch_size, 1, None)
        _range("train.distribute_timeout", self.distribute_timeout, 0.0, None, open_low=True)
        if self.mixed_precision is True:  # one spelling per setting: a resume compares them
            object.__setattr__(self, "mixed_precision", "float16")


@dataclass(frozen=True)
class DecodeConfig:
    """Search settings used by ``translate`` / ``evaluate`` unless overridden by flags.
    The output length limit is ``max_ratio * source_length + max_extra`` subwords."""

    beam_size: int = 5
    length_penalty: float = 0.6
    n_best: int = 1
    max_ratio: float = 2.0
    max_extra: int = 10
    batch_size: int = 64
    # the weights and arithmetic of decoding: "bfloat16" casts the weights once, at load
    # (training is unaffected); fast on CPUs with AMX / AVX512_BF16 with oneDNN on
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        _range("decode.beam_size", self.beam_size, 1, 100)
        _range("decode.length_penalty", self.length_penalty, 0.0, 10.0)
        _range("decode.n_best", self.n_best, 1, 100)
        if self.n_best > self.beam_size:
            raise ConfigError(
                f"decode.n_best={self.n_best} is larger than decode.beam_size={self.beam_size}; "
                "n_best must be <= beam_size"
            )
        # bounded so that the int32 length limit cannot overflow (an overflowed limit
        # broke the search graph with a TensorListStack error)
        _range("decode.max_ratio", self.max_ratio, 0.0, 100.0)
        _range("decode.max_extra", self.max_extra, 0, 10_000)
        _range("decode.batch_size", self.batch_size, 1, None)


@dataclass(frozen=True)
class Config:
    """The whole configuration; build it with :func:`load_config`."""

    run_dir: str
    data: DataConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    decode: DecodeConfig


DEFAULT_RUN_DIR = "runs/default"

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "decode": DecodeConfig,
}


# ----------------------------------------------------------------------------- checks


def _require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid: expected {what}")


def _range(
    key: str,
    value: float,
    low: float | None,
    high: float | None,
    open_low: bool = False,
) -> None:
    _finite(key, value)
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "-inf" if low is None else repr(low)
        hi = "inf" if high is None else repr(high)
        bracket = "(" if open_low else "["
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {bracket}{lo}, {hi}]")


def _finite(key: str, value: Any) -> None:
    """NaN passes every comparison and Inf every lower bound: reject both by name."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not a finite number; give a number like 0.5")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}={value!r} is not allowed; expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            _finite(key, number)  # YAML .nan / .inf, or "nan" / "inf" from --set
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(
                f"unknown key {name}.{key}; valid keys of {name}: {', '.join(valid)}"
            )
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{name}: {exc}") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    path, raw_value = text.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) not in (1, 2) or not all(parts):
        raise ConfigError(f"--set {text!r}: expected section.key=value (or run_dir=value)")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return parts, value


def config_from_dict(raw: Any, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from a parsed YAML mapping plus ``--set`` overrides."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping with sections " + ", ".join(SECTIONS))
    merged: dict[str, Any] = {
        k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()
    }
    for text in overrides:
        parts, value = _parse_override(text)
        if len(parts) == 1:
            merged[parts[0]] = value
            continue
        section, key = parts
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {text!r}: unknown section {section!r}; valid: {', '.join(SECTIONS)}"
            )
        sub = merged.setdefault(section, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{section} must be a mapping of keys")
        sub[key] = value
    top_valid = ["run_dir", *SECTIONS]
    for key in merged:
        if key not in top_valid:
            raise ConfigError(f"unknown key {key}; valid top-level keys: {', '.join(top_valid)}")
    if "data" not in merged:
        raise ConfigError("data.train is missing; the config needs a data section with train")
    run_dir = _coerce("run_dir", merged.get("run_dir", DEFAULT_RUN_DIR), str)
    _require(bool(run_dir.strip()), "run_dir", run_dir,
             f"a directory for the run's files (empty would write into the current directory; "
             f"the default is {DEFAULT_RUN_DIR})")
    sections = {name: _build_section(name, cls, merged.get(name)) for name, cls in SECTIONS.items()}
    if sections["tokenizer"].sample_alpha > 0 and sections["train"].jit_compile:
        raise ConfigError(
            f"tokenizer.sample_alpha={sections['tokenizer'].sample_alpha} needs "
            "train.jit_compile: false (XLA pads every batch to its length bucket's bound, "
            "which a sampled segmentation can exceed); set one of them off"
        )
    return Config(run_dir=run_dir, **sections)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config file, apply overrides and validate everything."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def with_decode_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """A trained run's config with ``--set decode.key=value`` applied and validated.

    Only ``decode.*`` can change after training (the model, tokenizer and data are
    fixed by the run), so any other key is refused, named.
    """
    for text in overrides:
        parts, _ = _parse_override(text)
        if len(parts) != 2 or parts[0] != "decode":
            valid = ", ".join(f.name for f in dataclasses.fields(DecodeConfig))
            raise ConfigError(
                f"--set {text!r}: {'.'.join(parts)} is fixed by the trained run; translate "
                f"and evaluate take only decode.KEY=VALUE (keys: {valid})"
            )
    if not overrides:
        return cfg
    return config_from_dict(config_to_dict(cfg), overrides)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
