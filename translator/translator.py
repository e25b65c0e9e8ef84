"""The ``Translator`` facade: a model + tokenizers + compiled searches.

    from translator import Translator
    t = Translator.load("runs/spa-eng")
    t.translate(["¿Dónde está la biblioteca?"], beam_size=5)[0].text
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from translator.config import Config, DecodeConfig, load_config, with_decode_overrides
from translator.corpus import normalize
from translator.decoding import beam_search, bucket_size, greedy_search, max_lengths
from translator.ensemble import Ensemble
from translator.errors import UserError
from translator.hardware import cpu_has_native_bfloat16
from translator.model import Seq2Seq, build_model
from translator.prepare import RunPaths
from translator.tokenizer import (
    BOS_ID,
    EOS_ID,
    JOINT_FILE,
    PAD_ID,
    SRC_FILE,
    TGT_FILE,
    Tokenizers,
)

BEST_WEIGHTS = "best.weights.h5"


@dataclass
class Hypothesis:
    text: str
    score: float
    pieces: list[str]


@dataclass
class Translation:
    """One translated sentence: best ``text`` and ``score``; ``n_best`` hypotheses
    (best first); ``attention`` ``(target_pieces + EOS, source_pieces + EOS)`` when asked;
    ``source_too_long`` when the source has more subwords than ``train.max_len``, the
    longest the model saw in training (its translation may be cut short)."""

    text: str
    score: float
    n_best: list[Hypothesis] = field(default_factory=list)
    source_pieces: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None
    source_too_long: bool = False  # more subwords than the model was trained on (max_len)


log = logging.getLogger(__name__)


class Translator:
    """Translate raw sentences with a trained :class:`Seq2Seq`."""

    def __init__(self, model: Seq2Seq | Sequence[Seq2Seq], tokenizers: Tokenizers,
                 decode: DecodeConfig | None = None, max_len: int | None = None):
        # several models (sharing ``tokenizers``) decode as an ensemble; ``model`` is the first
        self.models: list[Seq2Seq] = list(model) if isinstance(model, Sequence) else [model]
        if not self.models:
            raise ValueError("Translator needs at least one model")
        self.model = self.models[0]
        self.tokenizers = tokenizers
        self.decode = decode or DecodeConfig()
        self.max_len = max_len  # train.max_len: longest source (subwords) seen in training
        self._searches: dict[tuple, Callable] = {}

    @classmethod
    def load(cls, run_dir: str | Path | Sequence[str | Path],
             weights: str | Path | Sequence[str | Path | None] | None = None,
             overrides: Sequence[str] = (), dtype: str | None = None) -> Translator:
        """Load from a run dir: ``config.yaml``, tokenizer and the best weights (or
        ``weights``: a path, or a file name in the run's ``checkpoints/``).
        ``overrides`` (``"decode.key=value"``) change the run's decode settings.
        ``dtype`` (default: the resulting ``decode.dtype``) is what the weights are cast
        to at load, ``"float32"`` or ``"bfloat16"``; every member of an ensemble gets it.

        A list of run dirs loads an ensemble (see :mod:`translator.ensemble`): their models
        must share the tokenizer (the same SentencePiece model files, byte for byte) and
        the language pair. The decode settings come from the first run's config (and
        ``overrides``); ``max_len`` is the smallest of the members' ``train.max_len``.
        ``weights`` is then None (each run's best weights) or one entry per run dir (a
        path, a name in that run's ``checkpoints/``, or None). A list of one run dir is
        the single model."""
        if isinstance(run_dir, (str, os.PathLike)):
            if weights is None or isinstance(weights, (str, os.PathLike)):
                return cls._load_one(run_dir, weights, overrides, dtype)
            run_dir = [run_dir]  # a list of weights: checked against one run dir below
        runs = list(run_dir)
        if not runs:
            raise UserError("no run dir to load")
        if weights is None:
            member_weights: list = [None] * len(runs)
        elif isinstance(weights, (str, os.PathLike)):
            if len(runs) > 1:
                raise UserError(f"weights {weights}: an ensemble of {len(runs)} run dirs needs "
                                "one weights entry per run dir (a list; None = its best "
                                "weights), or none at all")
            member_weights = [weights]
        else:
            member_weights = list(weights)
            if len(member_weights) != len(runs):
                raise UserError(f"{len(member_weights)} weights entries for {len(runs)} run "
                                "dirs: give one per run dir (None = its best weights)")
        if len(runs) == 1:
            return cls._load_one(runs[0], member_weights[0], overrides, dtype)
        _check_ensemble_members(runs)
        first = cls._load_one(runs[0], member_weights[0], overrides, dtype)
        others = [cls._load_one(run, w, dtype=first.decode.dtype, warn=False)
                  for run, w in zip(runs[1:], member_weights[1:], strict=True)]
        max_lens = [t.max_len for t in (first, *others) if t.max_len is not None]
        return cls([first.model, *(t.model for t in others)], first.tokenizers, first.decode,
                   min(max_lens) if max_lens else None)

    @classmethod
    def _load_one(cls, run_dir: str | Path, weights: str | Path | None = None,
                  overrides: Sequence[str] = (), dtype: str | None = None,
                  warn: bool = True) -> Translator:
        paths = RunPaths(Path(run_dir))
        if not paths.config.is_file():
            raise UserError(f"{run_dir}: not a run dir (no config.yaml); train one first")
        if dtype is not None:  # the last override wins, validated as --set's are
            overrides = (*overrides, f"decode.dtype={dtype}")
        cfg: Config = with_decode_overrides(load_config(paths.config), tuple(overrides))
        if cfg.decode.dtype == "bfloat16" and warn:  # once for an ensemble
            _warn_slow_bfloat16()
        tokenizers = Tokenizers.load(paths.root)
        # float32: Keras' global policy, as before decode.dtype existed
        model = build_model(cfg.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size,
                            dtype=None if cfg.decode.dtype == "float32" else cfg.decode.dtype)
        if not weights:
            weights = paths.checkpoints / BEST_WEIGHTS
            if not weights.is_file():
                raise UserError(f"{weights}: no trained weights; run `translator train` first")
        elif not Path(weights).is_file():
            if not (paths.checkpoints / weights).is_file():
                raise UserError(f"{weights}: no such weights file (nor in {paths.checkpoints})")
            weights = paths.checkpoints / weights  # a name inside the run's checkpoints/
        try:
            stored = _stored_weight_count(Path(weights))
            if stored != len(model.weights):  # Keras ignores layers the model lacks
                raise ValueError(f"the file holds {stored} weight arrays, the model has "
                                 f"{len(model.weights)}")
            model.load_weights(weights)
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
            # not a Keras file, a truncated one, or the weights of another model
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            first = first.strip().split(". ", 1)[0].rstrip(".")[:160]  # its first sentence
            reason = f" ({type(exc).__name__}: {first})" if first else ""
            raise UserError(
                f"{weights}: cannot load these weights into the model of {run_dir}{reason}; "
                "give a .weights.h5 or .keras file saved by this run (e.g. "
                f"{BEST_WEIGHTS} or averaged.weights.h5)"
            ) from None
        return cls(model, tokenizers, cfg.decode, cfg.train.max_len)

    @property
    def ensemble_size(self) -> int:
        """How many models decode together (1: a single model)."""
        return len(self.models)

    # ------------------------------------------------------------------ compiled searches

    def _search(self, beam_size: int, alpha: float, n_best: int, attention: bool) -> Callable:
        key = (beam_size, float(alpha), n_best, attention)
        if key not in self._searches:
            self._searches[key] = tf.function(
                search_fn(self.models, self.decode, beam_size, alpha, n_best, attention,
                          bucket=self.decode.dtype == "bfloat16"),
                input_signature=[tf.TensorSpec([None, None], tf.int32)], reduce_retracing=True)
        return self._searches[key]

    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        """Source ids + EOS, after the cleaning's :func:`~translator.corpus.normalize`
        (what the model was trained on); a text with nothing to translate is ``[EOS]``."""
        return [ids + [EOS_ID] for ids in self.tokenizers.src.encode([normalize(t) for t in texts])]

    # ------------------------------------------------------------------ public API

    def settings(self, beam_size: int | None = None, length_penalty: float | None = None,
                 n_best: int | None = None) -> tuple[int, float, int]:
        """The ``(beam_size, length_penalty, n_best)`` a search uses: the given values,
        else the run's ``decode`` config. The config's ``n_best`` is capped at a given
        ``beam_size`` (greedy search has one hypothesis); a given ``n_best`` larger
        than the beam is an error."""
        alpha = self.decode.length_penalty if length_penalty is None else length_penalty
        if beam_size is None:
            beam_size = self.decode.beam_size
        if n_best is None:
            return beam_size, alpha, min(self.decode.n_best, beam_size)
        if n_best > beam_size:
            raise UserError(f"--n-best {n_best} is larger than the beam size {beam_size}; the "
                            "n-best list comes from the beam: use a smaller --n-best or a "
                            "larger --beam-size")
        return beam_size, alpha, n_best

    def translate(
        self,
        texts: Sequence[str],
        beam_size: int | None = None,
        length_penalty: float | None = None,
        n_best: int | None = None,
        batch_size: int | None = None,
        return_attention: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Translation]:
        """Translate ``texts``; one :class:`Translation` per input, in input order.

        Sentences are sorted by length into batches and put back in order. An input
        with nothing to translate (empty, whitespace or zero-width characters only: no
        subwords) gives an empty translation with score 0 and is not sent to the model.
        ``on_batch(n)`` is called after each batch of ``n`` sentences (for progress bars).

        Unset arguments come from the run's ``decode`` config (see :meth:`settings`).
        ``n_best`` > 1 gives up to ``n_best`` hypotheses with distinct text: different
        segmentations of the same string are one hypothesis (with the best score), so
        the search keeps all ``beam_size`` hypotheses and returns the first ``n_best``
        distinct ones.
        """
        beam_size, alpha, n_best = self.settings(beam_size, length_penalty, n_best)
        batch_size = batch_size or self.decode.batch_size
        results: list[Translation | None] = [None] * len(texts)
        all_ids = self.encode_sources(texts)
        todo = [i for i, source in enumerate(all_ids) if len(source) > 1]  # more than EOS
        for i, source in enumerate(all_ids):
            if len(source) == 1:  # empty in, empty out
                results[i] = Translation(text="", score=0.0)
        ids = [all_ids[i] for i in todo]
        order = sorted(range(len(todo)), key=lambda j: len(ids[j]))
        searched = beam_size if n_best > 1 else 1  # all beams, to fill n_best after dedup
        search = self._search(beam_size, alpha, searched, return_attention)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(ids[j]) for j in chunk)
            rows = len(chunk)
            if self.decode.dtype == "bfloat16":
                # oneDNN, which bfloat16 needs, builds and keeps kernels per tensor shape:
                # source widths rounded up to a multiple of 8 (masked padding: the same
                # translations and scores) and the sentence count up to a bucket (1, 2, 4,
                # 8, 16, 24, ...; rows holding only EOS, which the search drops after its
                # first step: search_fn's ``bucket``) give a server's batches few shapes
                width = -(-width // 8) * 8
                rows = bucket_size(rows)
            batch = np.zeros((rows, width), np.int32)
            batch[len(chunk):, 0] = EOS_ID
            for row, j in enumerate(chunk):
                batch[row, : len(ids[j])] = ids[j]
            out = {k: v.numpy() for k, v in search(tf.constant(batch)).items()}
            for row, j in enumerate(chunk):
                result = self._make(out, row, ids[j], n_best, return_attention)
                result.source_too_long = self.max_len is not None and len(ids[j]) - 1 > self.max_len
                results[todo[j]] = result
            if on_batch is not None:
                on_batch(len(chunk))
        return results  # type: ignore[return-value]

    def _make(self, out, row, src_ids, n_best, return_attention) -> Translation:
        """The :class:`Translation` of ``row`` of a search's output: its searched
        hypotheses (best first) deduplicated by text, the first ``n_best`` kept."""
        tgt = self.tokenizers.tgt
        hyps: list[Hypothesis] = []
        seen: set[str] = set()
        for n in range(out["tokens"].shape[1]):
            toks = out["tokens"][row, n, : out["lengths"][row, n]].tolist()
            text = tgt.decode(toks)
            if text in seen:  # the same string from another segmentation, scored lower
                continue
            seen.add(text)
            hyps.append(Hypothesis(text, float(out["scores"][row, n]),
                                   [tgt.id_to_piece(t) for t in toks]))
            if len(hyps) == n_best:
                break
        best = hyps[0]
        result = Translation(text=best.text, score=best.score, n_best=hyps)
        if return_attention:
            src = self.tokenizers.src
            result.source_pieces = [src.id_to_piece(t) for t in src_ids]
            steps = len(best.pieces) + 1  # + EOS
            result.attention = out["attention"][row, 0, :steps, : len(src_ids)]
        return result


def search_fn(model: Seq2Seq | Sequence[Seq2Seq], decode: DecodeConfig, beam_size: int,
              alpha: float, n_best: int, attention: bool, bucket: bool = False
              ) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The search both front doors compile: :class:`Translator` wraps it in a
    ``tf.function``, :mod:`translator.export` calls it inside its serving function.

    It maps source ids ``(batch, src_len)`` (EOS-terminated, 0-padded) to ``tokens``
    ``(batch, n_best, len)``, ``lengths`` and ``scores`` ``(batch, n_best)`` and, with
    ``attention``, ``attention`` ``(batch, n_best, len + 1, src_len)``. The output limit is
    ``decode.max_ratio * source_length + decode.max_extra`` (see :func:`max_lengths`).
    ``model`` may be a list of models sharing the target vocabulary: two or more decode as
    an :class:`~translator.ensemble.Ensemble` (mean log-probabilities at every step).

    ``bucket``: the searches keep their active sentences at a few sizes (see
    :func:`~translator.decoding.beam_search`), and a source row holding only EOS is
    padding (added to bucket the batch), not a sentence: its output is meaningless."""
    ratio, extra = decode.max_ratio, decode.max_extra
    if isinstance(model, Sequence):
        models = list(model)
        if not models:
            raise ValueError("search_fn needs at least one model")
        decoder = models[0] if len(models) == 1 else Ensemble(models)
    else:
        decoder = model
    normalized = isinstance(decoder, Ensemble)
    constant = decoder.constant_keys if normalized else decoder.decoder.CONSTANT_STATE

    def search(source_ids):
        state = decoder.encode(source_ids)
        src_len = tf.reduce_sum(tf.cast(tf.not_equal(source_ids, PAD_ID), tf.int32), 1)
        limit = max_lengths(src_len, ratio, extra)
        real = src_len > 1 if bucket else None
        if beam_size == 1:
            r = greedy_search(decoder.step, state, limit, BOS_ID, EOS_ID, attention,
                              normalized=normalized, bucket=bucket, real=real)
        else:
            r = beam_search(decoder.step, state, limit, BOS_ID, EOS_ID, beam_size, alpha, n_best,
                            attention, constant_keys=constant, normalized=normalized,
                            bucket=bucket, real=real)
        out = {"tokens": r.tokens, "lengths": r.lengths, "scores": r.scores}
        if attention:
            out["attention"] = r.attention
        return out

    return search


def _warn_slow_bfloat16() -> None:
    """decode.dtype=bfloat16 is fast only with bfloat16 instructions and oneDNN's kernels:
    without oneDNN, TensorFlow's own bfloat16 kernels decoded single sentences 2.6x and
    batches of 32 1.5x slower than float32 on an AMX CPU (results/serve-bf16/)."""
    if tf.config.list_physical_devices("GPU"):
        return
    if cpu_has_native_bfloat16() is False:
        log.warning("decode.dtype=bfloat16: this CPU has no bfloat16 instructions "
                    "(avx512_bf16 / amx_bf16 / bf16), so it emulates them and may decode "
                    "slower than float32; use decode.dtype=float32")
    elif os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
        log.warning("decode.dtype=bfloat16 with TF_ENABLE_ONEDNN_OPTS=0: without oneDNN "
                    "bfloat16 decodes slower than float32; unset it or set it to 1")


def _tokenizer_files(run_dir: Path) -> tuple[str, tuple[bytes, ...]]:
    """The names and bytes of a run's SentencePiece model file(s)."""
    tokenizers = Tokenizers.load(run_dir)
    if tokenizers.joint:
        return JOINT_FILE, (tokenizers.src.proto,)
    return f"{SRC_FILE} + {TGT_FILE}", (tokenizers.src.proto, tokenizers.tgt.proto)


def _check_ensemble_members(runs: Sequence[str | Path]) -> None:
    """Refuse (one line) members that do not share the first run's tokenizer files or
    language pair: the search adds their log-probabilities token id by token id."""
    def pair(run) -> tuple[str, str, tuple[str, tuple[bytes, ...]]]:
        paths = RunPaths(Path(run))
        if not paths.config.is_file():
            raise UserError(f"{run}: not a run dir (no config.yaml); train one first")
        data = load_config(paths.config).data
        return data.src_lang, data.tgt_lang, _tokenizer_files(paths.root)

    src, tgt, (names, files) = pair(runs[0])
    for run in runs[1:]:
        other_src, other_tgt, (other_names, other_files) = pair(run)
        if (other_src, other_tgt) != (src, tgt):
            raise UserError(f"{run}: translates {other_src}-{other_tgt} but {runs[0]} translates "
                            f"{src}-{tgt}; the members of an ensemble must translate the same "
                            "language pair")
        if other_files != files:
            raise UserError(
                f"{run}: its tokenizer ({other_names}) differs from that of {runs[0]} "
                f"({names}); the members of an ensemble must share the tokenizer byte for "
                "byte: train them on the same data and tokenizer config (e.g. `translator "
                "train CONFIG --set run_dir=runs/NAME-seed2 --set train.seed=2`)")


def _stored_weight_count(path: Path) -> int:
    """How many model weight arrays a ``.weights.h5`` or ``.keras`` file holds (its
    optimizer's left out)."""
    import io

    import h5py

    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            source = io.BytesIO(archive.read("model.weights.h5"))
    else:
        source = path
    names: list[str] = []
    with h5py.File(source, "r") as f:
        f.visititems(lambda name, obj: names.append(name)
                     if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/")
                     else None)
    return len(names)
