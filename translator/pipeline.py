"""tf.data input pipeline: SentencePiece ids, BOS/EOS, length bucketing with a
token-based batch size, seeded shuffling and prefetch.

Sentences are encoded once, in Python, by :meth:`Tokenizer.encode`: the same code that
encodes sources for translation, so training and decoding always see the same ids
(tensorflow-text's SentencePiece op breaks some ties differently, e.g. on digit runs).

Subword regularization (``tokenizer.sample_alpha`` > 0, training only): a
:class:`SubwordSampler` segments each training sentence anew every time the pipeline
reads it, in the graph (``tensorflow_text.SentencepieceTokenizer`` with ``nbest_size`` and
``alpha``, a stateful op, so every epoch draws new segmentations). What stays fixed is
what the deterministic ids say: which pairs :func:`filter_by_length` keeps, and the length
each pair is bucketed by, so the batch count per epoch (:func:`count_batches`), the
progress bar and the LR schedule are exactly those of ``sample_alpha: 0``. A batch is
padded to its longest *sampled* sentence, so it can hold several times ``batch_tokens``
tokens (the sizes come from the deterministic lengths). A sampled side longer than ``max_len`` is
replaced by that sentence's deterministic ids (never dropped, never truncated) and
counted in :attr:`SubwordSampler.fallbacks`. With ``sample_alpha: 0`` none of this runs:
the ids are those of :meth:`Tokenizer.encode`, as without the feature.

Each element is ``({"source_ids": (batch, src_len), "target_in": (batch, tgt_len)},
target_out (batch, tgt_len), sample_weight (batch, tgt_len))`` with int32 ids,
``target_in = [BOS] + y``, ``target_out = y + [EOS]`` and ``sample_weight = 1.0`` on
real target tokens, ``0.0`` on padding.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from translator.corpus import Pairs
from translator.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, Tokenizers


def source_length(n_subwords: int) -> int:
    """Length of an encoded source: subwords + EOS."""
    return n_subwords + 1


@dataclass
class Encoded:
    """Parallel sentences as subword ids (no BOS/EOS): ``src[i]`` translates to ``tgt[i]``."""

    src: list[list[int]]
    tgt: list[list[int]]
    #: the sentences themselves, for :class:`SubwordSampler` (``src_text[i]`` gave ``src[i]``)
    src_text: list[str] | None = None
    tgt_text: list[str] | None = None

    def __len__(self) -> int:
        return len(self.src)


class Filtered(NamedTuple):
    """Pairs kept by :func:`filter_by_length`, with what the pipeline needs to know."""

    ids: Encoded
    dropped: int
    target_tokens: int  # subwords + EOS over the kept targets, for throughput figures
    lengths: list[int]  # per kept pair, the length the bucketing sees


def filter_by_length(pairs: Pairs, tokenizers: Tokenizers, max_len: int) -> Filtered:
    """Encode ``pairs`` and drop those whose source or target has more than ``max_len``
    subwords."""
    src_ids = tokenizers.src.encode(pairs.src)
    tgt_ids = tokenizers.tgt.encode(pairs.tgt)
    keep_src, keep_tgt, keep_src_text, keep_tgt_text, lengths, tokens = [], [], [], [], [], 0
    for si, ti, s, t in zip(src_ids, tgt_ids, pairs.src, pairs.tgt, strict=True):
        if len(si) <= max_len and len(ti) <= max_len:
            keep_src.append(si)
            keep_tgt.append(ti)
            keep_src_text.append(s)
            keep_tgt_text.append(t)
            lengths.append(max(len(si), len(ti)) + 1)  # + EOS on the source, + BOS on target_in
            tokens += len(ti) + 1
    kept = Encoded(keep_src, keep_tgt, keep_src_text, keep_tgt_text)
    return Filtered(kept, len(pairs) - len(keep_src), tokens, lengths)


class SubwordSampler:
    """Samples a new segmentation of each training sentence at every call, in the graph.

    ``alpha`` and ``nbest`` have sentencepiece's meaning (``tokenizer.sample_alpha`` /
    ``tokenizer.sample_nbest``): lattice sampling for a unigram model, BPE-dropout with
    probability ``alpha`` for a BPE model. The random generator is sentencepiece's own,
    seeded by the operating system, not by ``train.seed``: sampled runs do not repeat bit
    for bit. :attr:`fallbacks` counts the sampled sides longer than ``max_len`` that were
    replaced by their deterministic ids.
    """

    def __init__(self, tokenizers: Tokenizers, *, alpha: float, nbest: int, max_len: int):
        import tensorflow_text as tf_text  # registers the SentencePiece ops

        def op(tok: Tokenizer):
            return tf_text.SentencepieceTokenizer(
                model=tok.proto, out_type=tf.int32, nbest_size=nbest, alpha=alpha,
                add_bos=False, add_eos=False)

        self.alpha, self.nbest, self.max_len = alpha, nbest, max_len
        self._src = op(tokenizers.src)
        self._tgt = self._src if tokenizers.joint else op(tokenizers.tgt)
        self.fallbacks = tf.Variable(0, dtype=tf.int64, trainable=False, name="sample_fallbacks")

    def sample(self, text: tf.Tensor, deterministic: tf.Tensor, side: str = "src") -> tf.Tensor:
        """One sampled segmentation of the scalar string ``text``, ``(len,)`` int32;
        ``deterministic`` (its :meth:`Tokenizer.encode` ids) if the sample is too long."""
        tok = self._src if side == "src" else self._tgt
        sampled = tok.tokenize(text)
        over = tf.shape(sampled)[0] > self.max_len
        self.fallbacks.assign_add(tf.cast(over, tf.int64))
        return tf.cond(over, lambda: deterministic, lambda: sampled)

    def take_fallbacks(self) -> int:
        """The fallbacks counted since the last call (subtracted, so that those of
        batches read ahead meanwhile are not lost)."""
        n = int(self.fallbacks.read_value().numpy())
        self.fallbacks.assign_sub(n)
        return n


def bucket_boundaries(max_len: int) -> list[int]:
    """Upper bounds (exclusive) of the length buckets, finer for short sentences.

    The last boundary is above the longest possible element (``max_len + 1``).
    """
    bounds, b = [], 4
    while b <= max_len + 1:
        bounds.append(b)
        b += max(1, b // 8) if b >= 16 else 2
    bounds.append(max_len + 2)
    return sorted(set(bounds))


def bucket_batch_sizes(boundaries: Sequence[int], batch_tokens: int) -> list[int]:
    """Sentences per batch for each bucket so that ``batch * longest <= batch_tokens``.

    A bucket ``[b_prev, b)`` holds elements of length at most ``b - 1``. The extra
    last bucket (``>= boundaries[-1]``) can never be filled and gets size 1.
    """
    return [max(1, batch_tokens // (b - 1)) for b in boundaries] + [1]


def count_batches(lengths: Sequence[int], *, max_len: int, batch_tokens: int,
                  bucketing: bool = True, fixed_batch_size: int = 64) -> int:
    """The exact number of batches :func:`make_dataset` yields for these lengths.

    Bucketing flushes one partial batch per bucket at the end, whatever the shuffle
    order, so the count is ``sum(ceil(n_bucket / size_bucket))``.
    """
    if not bucketing:
        return -(-len(lengths) // fixed_batch_size)
    bounds = bucket_boundaries(max_len)
    sizes = bucket_batch_sizes(bounds, batch_tokens)
    counts = [0] * len(sizes)
    for n in lengths:
        counts[bisect.bisect_right(bounds, n)] += 1
    return sum(-(-c // size) for c, size in zip(counts, sizes, strict=True))


def deal_pairs(lengths: Sequence[int], workers: int, *, max_len: int, batch_tokens: int,
               bucketing: bool = True, fixed_batch_size: int = 64,
               seed: int = 0) -> list[np.ndarray]:
    """Split the pairs among ``workers`` in whole batches: the indices of each worker's pairs.

    Each length bucket's pairs (all pairs, without ``bucketing``), in a ``seed``-shuffled
    order, are cut into chunks of one batch (the bucket's batch size) and the chunks of all
    buckets go to the workers in turn. A worker then batches its pairs into exactly its
    chunks: the workers' batches add up to :func:`count_batches` of all the pairs, and no
    two workers' counts differ by more than one. (Slicing the pairs instead, pair ``i`` to
    worker ``i % workers``, leaves every worker a partial batch in every bucket.) Every
    worker computes the same split from the same arguments.
    """
    rng = np.random.default_rng(seed)
    if bucketing:
        bounds = bucket_boundaries(max_len)
        sizes = bucket_batch_sizes(bounds, batch_tokens)
        bucket = np.array([bisect.bisect_right(bounds, n) for n in lengths], dtype=np.int64)
    else:
        sizes = [fixed_batch_size]
        bucket = np.zeros(len(lengths), dtype=np.int64)
    order = rng.permutation(len(lengths))
    chunks = []
    for b, size in enumerate(sizes):
        members = order[bucket[order] == b]
        chunks.extend(members[i:i + size] for i in range(0, len(members), size))
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]  # partial chunks anywhere
    empty = np.zeros(0, dtype=np.int64)
    return [np.sort(np.concatenate(chunks[k::workers] or [empty])) for k in range(workers)]


def _ragged(seqs: Sequence[Sequence[int]]) -> tf.RaggedTensor:
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32)
    return tf.RaggedTensor.from_row_lengths(flat, np.array([len(x) for x in seqs], np.int64))


def _add_specials(s: tf.Tensor, t: tf.Tensor):
    source = tf.concat([s, [EOS_ID]], axis=0)
    target_in = tf.concat([[BOS_ID], t], axis=0)
    target_out = tf.concat([t, [EOS_ID]], axis=0)
    return source, target_in, target_out


def _to_model_inputs(source, target_in, target_out):
    weight = tf.cast(tf.not_equal(target_out, PAD_ID), tf.float32)
    return {"source_ids": source, "target_in": target_in}, target_out, weight


def make_dataset(
    ids: Encoded,
    *,
    max_len: int,
    batch_tokens: int,
    shuffle: bool,
    seed: int = 0,
    shuffle_buffer: int = 200_000,
    batch_shuffle_buffer: int = 10_000,
    bucketing: bool = True,
    fixed_batch_size: int = 64,
    pad_to_bucket_boundary: bool = False,
    lengths: Sequence[int] | None = None,
    sampler: SubwordSampler | None = None,
) -> tf.data.Dataset:
    """Batches for training or evaluation from pairs of ids that
    :func:`filter_by_length` kept (none longer than ``max_len``).

    With ``bucketing`` the batch size is token-based (``batch_tokens``); otherwise
    ``fixed_batch_size`` sentences padded to the longest one (the TF tutorial's way).
    Tokenized sentences are cached in memory, so tokenization runs once. Given the
    pairs' ``lengths`` (from :func:`filter_by_length`) the dataset has a known length
    (:func:`count_batches`), which Keras uses for its progress bar and the LR schedule
    for its decay; the count is checked as the data flows. With ``shuffle`` and
    ``bucketing`` the batches are shuffled too (``batch_shuffle_buffer`` batches).

    With a ``sampler`` (training with subword regularization; ``ids`` must carry the
    texts) each sentence is segmented anew by sampling every time it is read, and the
    bucketing goes by the deterministic length, so the batch count is unchanged (see
    the module docstring).
    """
    longest = max((len(x) for x in itertools.chain(ids.src, ids.tgt)), default=0)
    if longest > max_len:
        raise ValueError(f"a sentence has {longest} subwords, more than max_len={max_len}; "
                         "filter the pairs with filter_by_length first")
    if sampler is None:
        ds = tf.data.Dataset.from_tensor_slices((_ragged(ids.src), _ragged(ids.tgt)))
        ds = ds.map(_add_specials).cache()
        padding: tuple = (PAD_ID, PAD_ID, PAD_ID)

        def length(s, ti, to):
            return tf.maximum(tf.shape(s)[0], tf.shape(ti)[0])
    else:
        if ids.src_text is None or ids.tgt_text is None:
            raise ValueError("sampling needs the texts: pass the ids filter_by_length kept")
        if pad_to_bucket_boundary:
            raise ValueError("a sampled segmentation can exceed its bucket's bound: "
                             "pad_to_bucket_boundary does not go with a sampler")
        ds = tf.data.Dataset.from_tensor_slices((
            tf.constant(ids.src_text, tf.string), tf.constant(ids.tgt_text, tf.string),
            _ragged(ids.src), _ragged(ids.tgt)))
        padding = (PAD_ID, PAD_ID, PAD_ID, 0)

        def length(s, ti, to, n):
            return n
    if shuffle:
        ds = ds.shuffle(min(shuffle_buffer, max(1, len(ids))), seed=seed,
                        reshuffle_each_iteration=True)
    if sampler is not None:
        def sample(src_text, tgt_text, src_ids, tgt_ids):
            n = tf.maximum(tf.shape(src_ids)[0], tf.shape(tgt_ids)[0]) + 1  # as lengths
            s = sampler.sample(src_text, src_ids, "src")
            t = sampler.sample(tgt_text, tgt_ids, "tgt")
            return (*_add_specials(s, t), n)

        ds = ds.map(sample, num_parallel_calls=tf.data.AUTOTUNE)
    if bucketing:
        bounds = bucket_boundaries(max_len)
        ds = ds.bucket_by_sequence_length(
            element_length_func=length,
            bucket_boundaries=bounds,
            bucket_batch_sizes=bucket_batch_sizes(bounds, batch_tokens),
            pad_to_bucket_boundary=pad_to_bucket_boundary,
            padding_values=padding,
        )
        if shuffle:
            # Bucketing flushes its partial (often tiny) batches at the end of every
            # epoch; shuffling the batches spreads them out, so the epoch does not end
            # with a run of noisy full-size Adam steps.
            ds = ds.shuffle(batch_shuffle_buffer, seed=seed + 1,
                            reshuffle_each_iteration=True)
    else:
        ds = ds.padded_batch(fixed_batch_size, padding_values=padding)
    if sampler is not None:
        ds = ds.map(lambda s, ti, to, n: (s, ti, to))
    if lengths is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(count_batches(
            lengths, max_len=max_len, batch_tokens=batch_tokens, bucketing=bucketing,
            fixed_batch_size=fixed_batch_size)))
    return ds.map(_to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )
