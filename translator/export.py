"""SavedModel export: raw strings in, translations out (``translator export``).

The SavedModel's ``serving_default`` signature takes ``text`` (``tf.string [batch]``,
raw sentences) and returns, batch first (TF Serving's row format needs that, and it
cannot return ragged tensors):

- ``translation`` ``string [batch]`` and ``score`` ``float32 [batch]``: the best hypothesis;
- ``n_best`` ``string [batch, N]`` and ``n_best_scores`` ``float32 [batch, N]``: up to ``N``
  hypotheses with distinct text, best first, like ``translator translate --n-best N``;
  a row with fewer distinct hypotheses is padded with ``""`` and :data:`NO_SCORE`;
- ``attention`` ``float32 [batch, tgt_len, src_len]`` (the best hypothesis's, zero-padded)
  with ``target_length`` (subwords + EOS) and ``source_length`` (subwords + EOS),
  ``int32 [batch]``, to cut each row to ``[:target_length, :source_length]``;
- ``source_too_long`` ``bool [batch]``: the source has more subwords than ``train.max_len``
  (longer than anything the model was trained on; it is translated, but its translation
  may be cut short), as :attr:`translator.translator.Translation.source_too_long`.

Everything runs in the graph, with no Python: the input normalization of
:func:`translator.corpus.normalize` as regular expressions; SentencePiece through
``tensorflow_text`` (its op keeps the model proto in the graph); the project's compiled
search (:func:`translator.translator.search_fn`, the one :class:`Translator` uses) with
loops bounded by the ``decode`` length limits. A loaded model needs only ``tensorflow`` and
``import tensorflow_text`` (which registers the SentencePiece ops).

SentencePiece: ``tensorflow_text`` 2.21 bundles an older SentencePiece (0.1.x) than the
``sentencepiece`` package that encodes training batches (0.2). They break exact score
ties between segmentations differently (``"12000"``: ``▁12 0 00`` here, ``▁12 00 0`` in the
op), so the graph uses the op only for SentencePiece's normalization (NFKC rules,
whitespace, the ``▁`` prefix) and segments the normalized text itself with the unigram
Viterbi of ``sentencepiece`` 0.2 (:class:`UnigramSegmenter`): same scores, same float32
sums, same tie rule (the earliest start wins), unknown characters merged into one ``<unk>``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from translator.config import DecodeConfig
from translator.decoding import NEG_INF
from translator.errors import UserError
from translator.fileio import write_json_atomic
from translator.model import Seq2Seq
from translator.tokenizer import EOS_ID, PAD_ID, UNK_ID, Tokenizer, Tokenizers
from translator.translator import BEST_WEIGHTS, Translator, search_fn

log = logging.getLogger(__name__)

#: ``n_best_scores`` of the padding slots of a row with fewer distinct hypotheses than N
#: (finite: TF Serving's JSON has no ``-inf``).
NO_SCORE = NEG_INF
#: Op types that must not be in an exported graph: Python callbacks cannot be served, and
#: a cuDNN LSTM cannot run on a CPU host (tensorflow#77442).
FORBIDDEN_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc", "CudnnRNN", "CudnnRNNV2",
                 "CudnnRNNV3")
SIGNATURE = "serving_default"
#: What was baked in (search settings, source run), beside the SavedModel's own files;
#: ``assets.extra/`` is where TF Serving keeps files it does not load.
SETTINGS_FILE = Path("assets.extra") / "translator_export.json"

# SentencePiece model proto: piece types and the unigram model type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE, _UNUSED = 1, 2, 3, 4, 6, 5
_UNIGRAM = 1
_UNK_PENALTY = np.float32(10.0)  # sentencepiece's kUnkPenalty: unk scores min_score - 10


# ----------------------------------------------------------------------------- normalize


def _char_class(member: np.ndarray) -> str:
    """An RE2 character class body for the code points ``c`` where ``member[c]``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], member, [False]]).astype(np.int8)))
    return "".join(f"\\x{{{a:X}}}" if b - 1 == a else f"\\x{{{a:X}}}-\\x{{{b - 1:X}}}"
                   for a, b in zip(edges[::2], edges[1::2], strict=True))


@functools.lru_cache(maxsize=1)
def _normalize_patterns() -> tuple[str, str, str]:
    """The patterns of :func:`translator.corpus.normalize`, for RE2: Python's ``\\s``
    (``str.isspace``) and the invisible characters spelled out (RE2's ``\\s`` is ASCII
    only), from this Python's Unicode tables. Surrogates are in no class: they cannot
    occur in UTF-8."""
    from translator import corpus

    chars = [chr(c) for c in range(0x110000)]
    surrogate = np.zeros(len(chars), bool)
    surrogate[0xD800:0xE000] = True
    space = np.array([ch.isspace() for ch in chars]) & ~surrogate
    invisible = np.array([re.fullmatch(f"[{corpus._INVISIBLE}]", ch) is not None
                          for ch in chars[:0x10000]] + [False] * (len(chars) - 0x10000))
    hidden = np.array([not corpus._visible(ch) for ch in chars]) & ~surrogate
    edge = _char_class(space | invisible)
    return f"[{_char_class(space)}]+", f"^[{edge}]+|[{edge}]+$", f"[{_char_class(hidden)}]*"


def normalize_graph(text: tf.Tensor) -> tf.Tensor:
    """:func:`translator.corpus.normalize` on a ``string`` tensor, in TF ops. Bytes that
    are not UTF-8 become U+FFFD first (a Python ``str`` cannot hold them)."""
    spaces, edges, nothing_visible = _normalize_patterns()
    text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                        replacement_char=0xFFFD)
    text = tf.strings.regex_replace(text, "\ufeff", "")
    text = tf.strings.regex_replace(text, spaces, " ")
    text = tf.strings.regex_replace(text, edges, "")
    return tf.where(tf.strings.regex_full_match(text, nothing_visible), "", text)


# ----------------------------------------------------------------------------- SentencePiece


class UnigramSegmenter(tf.Module):
    """SentencePiece unigram encoding in TF ops, equal to :meth:`Tokenizer.encode`.

    ``tensorflow_text``'s op normalizes (its pieces joined are the normalized text);
    the segmentation is ``sentencepiece`` 0.2's ``EncodeOptimized`` Viterbi: the best
    path by float32 sums of piece scores, an exact tie going to the candidate that starts
    earliest, a character no piece covers as ``<unk>`` (score ``min - 10``), runs of
    ``<unk>`` merged into one.
    """

    def __init__(self, tokenizer: Tokenizer, name: str | None = None):
        super().__init__(name=name)
        import tensorflow_text as tft
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(tokenizer.proto)
        if proto.trainer_spec.model_type != _UNIGRAM:
            raise UserError(f"{tokenizer.name}: export supports SentencePiece unigram models "
                            f"(tokenizer.type: unigram), not model type "
                            f"{proto.trainer_spec.model_type}")
        odd = [p.piece for p in proto.pieces if p.type in (_USER_DEFINED, _BYTE)]
        if odd:
            raise UserError(f"{tokenizer.name}: export does not support user-defined or byte "
                            f"pieces ({odd[0]!r}); retrain the tokenizer with `translator prepare`")
        normal = [(i, p) for i, p in enumerate(proto.pieces) if p.type == _NORMAL]
        scores = np.array([p.score for p in proto.pieces], np.float32)
        scores[UNK_ID] = np.float32(min(p.score for _, p in normal)) - _UNK_PENALTY
        self.max_chars = max(len(p.piece) for _, p in normal)
        self.normalizer = tft.SentencepieceTokenizer(model=tokenizer.proto, out_type=tf.string)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([p.piece for _, p in normal], tf.string),
                tf.constant([i for i, _ in normal], tf.int32)),
            default_value=-1)
        self.scores = tf.constant(scores)

    def __call__(self, text: tf.Tensor) -> tf.RaggedTensor:
        """``string [batch]`` (already :func:`normalize_graph`-ed) -> ids, ragged
        ``int32 [batch, None]``."""
        big_k = self.max_chars
        norm = tf.strings.reduce_join(self.normalizer.tokenize(text), axis=-1)
        _, starts = tf.strings.unicode_split_with_offsets(norm, "UTF-8")
        starts = tf.cast(starts, tf.int32)
        n = tf.cast(starts.row_lengths(), tf.int32)
        batch, length = tf.shape(n)[0], tf.reduce_max(tf.concat([n, [0]], 0))
        # offsets[b, i]: byte offset of character i (the string's end for i >= n)
        ends = tf.strings.length(norm)[:, tf.newaxis]
        offsets = starts.to_tensor(0, shape=[batch, length + 1])
        offsets = tf.where(tf.range(length + 1)[tf.newaxis] < n[:, tf.newaxis], offsets, ends)
        # every substring by its end e (0..L) and its length k = K - j (j = 0..K-1)
        e = tf.range(length + 1)[:, tf.newaxis]
        k = big_k - tf.range(big_k)[tf.newaxis]
        valid = (e - k >= 0)[tf.newaxis] & (e <= n[:, tf.newaxis, tf.newaxis])  # (b, L+1, K)
        first = tf.gather(offsets, tf.maximum(e - k, 0), axis=1)
        last = tf.gather(offsets, tf.broadcast_to(e, tf.shape(k + e)), axis=1)
        flat = tf.reshape(tf.where(valid, first, 0), [batch, -1])
        sizes = tf.reshape(tf.where(valid, last - first, 0), [batch, -1])
        pieces = tf.strings.substr(norm[:, tf.newaxis], flat, sizes)
        ids = tf.reshape(self.table.lookup(pieces), tf.shape(valid))
        ids = tf.where(valid, ids, -1)
        ids = tf.where(valid & (k == 1) & (ids < 0), UNK_ID, ids)  # a character no piece covers
        scores = tf.where(ids >= 0, tf.gather(self.scores, tf.maximum(ids, 0)), -np.inf)
        scores = tf.transpose(scores, (1, 0, 2))  # (L+1, batch, K)

        def forward(e, window, back):
            # window[:, j] is the best score of a path to e - (K - j); candidate j starts there.
            # argmax takes the first maximum: an exact tie goes to the earliest start
            cand = window + scores[e]
            j = tf.argmax(cand, axis=1, output_type=tf.int32)
            best = tf.reduce_max(cand, axis=1, keepdims=True)
            return e + 1, tf.concat([window[:, 1:], best], 1), back.write(e, big_k - j)

        window = tf.concat([tf.fill([batch, big_k - 1], -np.inf), tf.zeros([batch, 1])], 1)
        back = tf.TensorArray(tf.int32, size=length + 1, element_shape=[None])
        back = back.write(0, tf.ones([batch], tf.int32))  # never read; keeps it non-empty
        _, _, back = tf.while_loop(lambda e, *_: e <= length, forward,
                                   (tf.constant(1), window, back), maximum_iterations=length)
        back = tf.transpose(back.stack())  # (batch, L+1): length of the best path's last piece
        ids = tf.reverse(ids, axis=[2])  # index k - 1

        def backward(i, pos, out):
            live = pos > 0
            k = tf.gather(back, pos, batch_dims=1)
            piece = tf.gather(tf.gather(ids, pos, batch_dims=1), k - 1, batch_dims=1)
            return i + 1, tf.where(live, pos - k, 0), out.write(i, tf.where(live, piece, -1))

        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])
        out = out.write(0, tf.fill([batch], -1))  # keeps it non-empty
        _, _, out = tf.while_loop(lambda i, pos, _: tf.reduce_any(pos > 0), backward,
                                  (tf.constant(1), n, out), maximum_iterations=length)
        rev = tf.transpose(out.stack())[:, 1:]  # last piece first, then -1
        count = tf.reduce_sum(tf.cast(rev >= 0, tf.int32), axis=1)
        ids = tf.reverse_sequence(rev, count, seq_axis=1, batch_axis=0)
        # sentencepiece merges a run of unknown pieces into one
        prev = tf.pad(ids[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
        keep = (tf.range(tf.shape(ids)[1])[tf.newaxis] < count[:, tf.newaxis]) & ~(
            (ids == UNK_ID) & (prev == UNK_ID))
        return tf.ragged.boolean_mask(ids, keep)


# ----------------------------------------------------------------------------- the module


@dataclass(frozen=True)
class ExportSettings:
    """The search baked into a SavedModel."""

    beam_size: int
    length_penalty: float
    n_best: int
    max_ratio: float
    max_extra: int
    max_len: int | None = None  # train.max_len: longer sources are flagged source_too_long


class TranslatorModule(tf.Module):
    """What the SavedModel holds: the model's variables, the SentencePiece resources and
    one serving function (:meth:`serve`)."""

    def __init__(self, model: Seq2Seq, tokenizers: Tokenizers, settings: ExportSettings):
        super().__init__(name="translator")
        import tensorflow_text as tft

        self.model = model
        self.settings = settings
        self.encoder = UnigramSegmenter(tokenizers.src, name="source_spm")
        self.detokenizer = tft.SentencepieceTokenizer(model=tokenizers.tgt.proto)
        decode = DecodeConfig(beam_size=settings.beam_size, length_penalty=settings.length_penalty,
                              n_best=settings.n_best, max_ratio=settings.max_ratio,
                              max_extra=settings.max_extra)
        # all beams when n_best > 1, to fill n_best after deduplication (as Translator does)
        self._searched = settings.beam_size if settings.n_best > 1 else 1
        self._search = search_fn(model, decode, settings.beam_size, settings.length_penalty,
                                 self._searched, attention=True)
        self._max_len = tf.constant(settings.max_len if settings.max_len is not None
                                    else np.iinfo(np.int32).max, tf.int32)
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None], tf.string, name="text")])

    def _serve(self, text):
        n_best = self.settings.n_best
        ids = self.encoder(normalize_graph(text))
        todo = tf.cast(tf.where(ids.row_lengths() > 0)[:, 0], tf.int32)  # rows with subwords
        src = tf.gather(ids, todo)
        src = tf.concat([src, tf.fill([src.nrows(), 1], EOS_ID)], axis=1)
        src_len = tf.cast(src.row_lengths(), tf.int32)
        src = src.to_tensor(PAD_ID)

        def run():
            out = self._search(src)
            return (out["tokens"], out["lengths"], out["scores"], out["attention"][:, 0])

        def nothing():  # no row to translate: the search needs at least one
            m, k = tf.shape(src)[0], self._searched
            return (tf.zeros([m, k, 0], tf.int32), tf.zeros([m, k], tf.int32),
                    tf.zeros([m, k]), tf.zeros([m, 0, tf.shape(src)[1]]))

        tokens, lengths, scores, attention = tf.cond(tf.size(todo) > 0, run, nothing)
        texts = self._detokenize(tokens, lengths)
        texts, scores = _distinct(texts, scores, n_best)
        tgt_len = lengths[:, 0] + 1  # + EOS
        steps = tf.range(tf.shape(attention)[1])[tf.newaxis, :, tf.newaxis]
        cols = tf.range(tf.shape(attention)[2])[tf.newaxis, tf.newaxis, :]
        attention = tf.where((steps < tgt_len[:, tf.newaxis, tf.newaxis])
                             & (cols < src_len[:, tf.newaxis, tf.newaxis]), attention, 0.0)

        # back to one row per input: row i is searched row where[i], or the empty result
        batch = tf.shape(text)[0]
        where = tf.tensor_scatter_nd_update(tf.fill([batch], tf.size(todo)), todo[:, tf.newaxis],
                                            tf.range(tf.size(todo)))

        def rows(x, empty):
            return tf.gather(tf.concat([x, tf.cast(empty, x.dtype)[tf.newaxis]], 0), where)

        empty_scores = tf.concat([[0.0], tf.fill([n_best - 1], NO_SCORE)], 0)
        texts = rows(texts, tf.fill([n_best], ""))
        scores = rows(scores, empty_scores)
        return {
            "translation": texts[:, 0],
            "score": scores[:, 0],
            "n_best": texts,
            "n_best_scores": scores,
            "attention": rows(attention, tf.zeros(tf.shape(attention)[1:])),
            "source_length": rows(src_len, 0),
            "target_length": rows(tgt_len, 0),
            "source_too_long": rows(src_len - 1 > self._max_len, False),
        }

    def _detokenize(self, tokens, lengths):
        """``tokens`` ``(m, n, len)`` with ``lengths`` ``(m, n)`` -> strings ``(m, n)``."""
        shape = tf.shape(lengths)
        flat = tf.reshape(tokens, [-1, tf.shape(tokens)[2]])
        ragged = tf.RaggedTensor.from_tensor(flat, lengths=tf.reshape(lengths, [-1]))
        return tf.reshape(self.detokenizer.detokenize(ragged), shape)


def _distinct(texts, scores, n):
    """The first ``n`` distinct texts of each row (and their scores), best first, padded
    with ``""`` / :data:`NO_SCORE`: different segmentations of one string count once,
    with the best score (what :meth:`Translator.translate` returns as ``n_best``)."""
    k = tf.shape(texts)[1]
    same = tf.equal(texts[:, :, tf.newaxis], texts[:, tf.newaxis, :])
    before = tf.range(k)[:, tf.newaxis] > tf.range(k)[tf.newaxis, :]  # j earlier than i
    first = ~tf.reduce_any(same & before[tf.newaxis], axis=2)
    rank = tf.where(first, tf.range(k)[tf.newaxis], tf.range(k)[tf.newaxis] + k)
    order = tf.argsort(rank, axis=1, stable=True)
    texts, scores = tf.gather(texts, order, batch_dims=1), tf.gather(scores, order, batch_dims=1)
    kept = tf.gather(first, order, batch_dims=1)
    pad = tf.maximum(n - k, 0)
    texts = tf.pad(texts, [[0, 0], [0, pad]], constant_values="")[:, :n]
    scores = tf.pad(scores, [[0, 0], [0, pad]], constant_values=NO_SCORE)[:, :n]
    kept = tf.pad(kept, [[0, 0], [0, pad]], constant_values=False)[:, :n]
    return tf.where(kept, texts, ""), tf.where(kept, scores, NO_SCORE)


# ----------------------------------------------------------------------------- export


def _hide_gpus() -> None:
    """Trace on the CPU path: a graph traced while a GPU is visible may hold a cuDNN LSTM
    (``CudnnRNNV3``) that a CPU host cannot run (tensorflow#77442)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialized (e.g. a Translator ran before)
        if tf.config.list_logical_devices("GPU"):
            raise UserError("export must trace on the CPU, but this process already uses a "
                            "GPU; export in a fresh process (`translator export`) or set "
                            "CUDA_VISIBLE_DEVICES=-1") from None


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another OUT_DIR")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: not empty; choose an empty or new OUT_DIR, or pass --force "
                        "to replace it")
    probe = out.absolute().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{out}: {probe} is not a directory; choose another OUT_DIR")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{out}: cannot write in {probe} (permission denied); choose a "
                        "writable OUT_DIR")


def _temp_dir_beside(out: Path) -> Path:
    """A new directory next to ``out`` (same file system, so the final rename is atomic)."""
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=parent))
    except OSError as exc:
        raise UserError(f"{out}: cannot write in {parent} ({exc.strerror or exc}); choose a "
                        "writable OUT_DIR") from None


def export_saved_model(run_dir: str | Path, out_dir: str | Path, weights: str | Path | None = None,
                       beam_size: int | None = None, length_penalty: float | None = None,
                       n_best: int | None = None, force: bool = False) -> dict:
    """Write ``run_dir``'s model as a SavedModel into ``out_dir`` and return what was baked
    in. Unset search settings come from the run's ``decode`` section (see
    :meth:`Translator.settings`). The SavedModel is written into a temporary directory
    beside ``out_dir`` and renamed into place, so a failed export leaves no partial
    SavedModel at ``out_dir`` (with ``force``, the old one stays until the new one is
    complete)."""
    out = Path(out_dir)
    _check_out_dir(out, force)
    _hide_gpus()
    tmp = _temp_dir_beside(out)
    try:
        translator = Translator.load(run_dir, weights, dtype="float32")  # graphs in float32
        beam, alpha, n = translator.settings(beam_size, length_penalty, n_best)
        d = translator.decode
        settings = ExportSettings(beam, float(alpha), n, d.max_ratio, d.max_extra,
                                  translator.max_len)
        module = TranslatorModule(translator.model, translator.tokenizers, settings)
        with tf.device("/CPU:0"):
            serve = module.serve.get_concrete_function()
        with _root_logger_untouched():
            tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: serve})
        forbidden = sorted(forbidden_ops(tmp))
        if forbidden:  # a bug, not bad input
            raise RuntimeError(f"the exported graph holds {forbidden}")
        info = {"run_dir": str(run_dir), "weights": str(weights or BEST_WEIGHTS),
                "beam_size": beam, "length_penalty": float(alpha), "n_best": n,
                "max_ratio": d.max_ratio, "max_extra": d.max_extra,
                "max_len": translator.max_len, "signature": SIGNATURE,
                "tensorflow": tf.__version__}
        write_json_atomic(tmp / SETTINGS_FILE, info)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it 0700: let a server's user read it
        _swap_into_place(tmp, out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the SavedModel ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s (beam %d, length penalty %g, n-best %d)", run_dir, out, beam,
             alpha, n)
    return {"saved_model": str(out), **info}


def read_settings(saved_model_dir: str | Path) -> dict:
    """What :func:`export_saved_model` baked into a SavedModel (its ``SETTINGS_FILE``)."""
    return json.loads((Path(saved_model_dir) / SETTINGS_FILE).read_text(encoding="utf-8"))


@contextlib.contextmanager
def _root_logger_untouched():
    """TensorFlow's SavedModel writer logs through ``logging.info``, which gives the root
    logger a handler (``logging.basicConfig``) when it has none: every later record of
    the package would then be printed twice. Take away what it added."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def forbidden_ops(saved_model_dir: str | Path) -> set[str]:
    """The :data:`FORBIDDEN_OPS` in a SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    found = set()
    for meta in sm.meta_graphs:
        nodes = list(meta.graph_def.node)
        for fn in meta.graph_def.library.function:
            nodes.extend(fn.node_def)
        found |= {node.op for node in nodes if node.op in FORBIDDEN_OPS}
    return found
