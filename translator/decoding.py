"""Greedy and beam search over a step function, as ``tf.while_loop`` graphs.

Model-agnostic: the searches only call

    step_fn(tokens (batch,), state) -> (logits (batch, vocab), state, attention (batch, src_len))

where ``state`` is any nest of tensors whose first dimension is the batch; with
``normalized=True`` the step function returns log-probabilities instead of logits (an
ensemble's mean of its members' log-probabilities, see :mod:`translator.ensemble`), which
the searches then take as they are instead of applying ``log_softmax``. Beam search
flattens beams into the batch (``batch * beam``), takes the top k of the
``beam * vocab`` candidates (by chunks, exactly what ``top_k`` takes: ``_top_k_last``),
reorders the state with ``tf.gather``, starts with beam
scores ``[0, -inf, ...]`` so the first step is not duplicated, ranks with the GNMT
length penalty ``lp(|Y|) = ((5 + |Y|) / 6) ** alpha`` and keeps finished hypotheses
frozen (they extend only with EOS at no cost). A sentence stops as soon as no live beam
can beat its n-best finished ones (an exact test, see ``beam_search``).

Both searches shrink the batch as they go: a sentence that is done (greedy: emitted EOS;
beam: settled) is gathered out of the loop's tensors, so the step function runs on the
unfinished sentences only. In a batch of sentences of mixed lengths (a server's batch of
whatever requests came in), most rows would otherwise be decoded on after they ended.
The results are those of the full-batch search.

Wrap a search in ``tf.function`` (see ``translator.Translator``) to compile it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

StepFn = Callable[[tf.Tensor, Any], tuple[tf.Tensor, Any, tf.Tensor]]

NEG_INF = -1e9


@dataclass
class SearchResult:
    """``tokens`` ``(batch, n_best, max_len)`` without BOS/EOS, 0-padded;
    ``lengths`` ``(batch, n_best)``; ``scores`` ``(batch, n_best)`` (log-probability,
    divided by the length penalty for beam search); ``attention``
    ``(batch, n_best, max_len, src_len)`` or None."""

    tokens: tf.Tensor
    lengths: tf.Tensor
    scores: tf.Tensor
    attention: tf.Tensor | None


def length_penalty(lengths: tf.Tensor, alpha: float) -> tf.Tensor:
    """GNMT length penalty ``((5 + length) / 6) ** alpha``."""
    return tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, alpha)


def max_lengths(source_lengths: tf.Tensor, ratio: float, extra: int) -> tf.Tensor:
    """Per-sentence output limit ``floor(ratio * source_length) + extra``."""
    return tf.cast(tf.floor(ratio * tf.cast(source_lengths, tf.float32)), tf.int32) + extra


def to_log_probs(logits: tf.Tensor) -> tf.Tensor:
    """``log_softmax`` over the vocabulary, in float32: what the searches score with."""
    return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)


def _step_log_probs(output: tf.Tensor, normalized: bool) -> tf.Tensor:
    return tf.cast(output, tf.float32) if normalized else to_log_probs(output)


def _attn_shape(attention: tf.Tensor) -> tf.TensorShape:
    return tf.TensorShape([None]).concatenate(attention.shape[1:])


def greedy_search(
    step_fn: StepFn,
    state: Any,
    max_len: tf.Tensor,
    bos_id: int,
    eos_id: int,
    return_attention: bool = False,
    normalized: bool = False,
    bucket: bool = False,
    real: tf.Tensor | None = None,
) -> SearchResult:
    """Pick the most likely token at each step.

    Args:
        state: initial decoder state for ``batch`` sentences.
        max_len: ``(batch,)`` int32, most tokens a hypothesis may have before EOS.
        normalized: ``step_fn`` returns log-probabilities, not logits.
        bucket, real: see :func:`beam_search`.
    """
    batch = tf.shape(max_len)[0]
    limit = tf.reduce_max(max_len)
    # As in beam_search, the loop runs on the active (unfinished) sentences only, ``rows``
    # holding their batch indices; what is returned is written at full size.
    rows, n_out = _first_rows(batch, bucket, real)
    tokens = tf.fill([batch], bos_id)
    out_tokens = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
    out_attn = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
    scores = tf.zeros([batch], tf.float32)
    lengths = tf.zeros([batch], tf.int32)
    final = (tf.zeros([n_out], tf.float32), tf.zeros([n_out], tf.int32))

    def cond(t, rows, *_):
        return tf.logical_and(t <= limit, tf.size(rows) > 0)

    def body(t, rows, tokens, state, max_len, scores, lengths, final, out_tokens, out_attn):
        logits, state, attention = step_fn(tokens, state)
        logp = _step_log_probs(logits, normalized)
        at_limit = t >= max_len
        vocab = tf.shape(logp)[1]
        eos_only = tf.where(tf.range(vocab) == eos_id, 0.0, NEG_INF)[tf.newaxis]
        logp = tf.where(at_limit[:, tf.newaxis], eos_only, logp)
        next_tokens = tf.argmax(logp, axis=-1, output_type=tf.int32)
        scores += tf.gather(logp, next_tokens, batch_dims=1)
        is_eos = tf.equal(next_tokens, eos_id)
        lengths += tf.cast(tf.logical_not(is_eos), tf.int32)
        out_tokens = out_tokens.write(
            t, _full(rows, tf.where(is_eos, 0, next_tokens), tf.zeros([n_out], tf.int32)))
        if return_attention:
            attention = tf.cast(attention, tf.float32)
            out_attn = out_attn.write(t, _full(rows, attention, tf.zeros(
                tf.stack([n_out, tf.shape(attention)[1]]))))
        final = (_full(rows, scores, final[0]), _full(rows, lengths, final[1]))
        keep, next_rows, changed = _next_rows(tf.logical_not(is_eos), rows, batch, bucket)
        # the state is gathered only when the rows change (most of it, the encoder
        # memory, does not change from step to step)
        state = tf.cond(changed,
                        lambda: tf.nest.map_structure(lambda x: tf.gather(x, keep), state),
                        lambda: state)
        return (t + 1, next_rows, tf.gather(next_tokens, keep), state,
                tf.gather(max_len, keep), tf.gather(scores, keep), tf.gather(lengths, keep),
                final, out_tokens, out_attn)

    loop_vars = (tf.constant(0), rows, tokens, state, max_len, scores, lengths, final,
                 out_tokens, out_attn)
    loop = tf.while_loop(cond, body, loop_vars, shape_invariants=_shrinking(loop_vars, 1, 7),
                         maximum_iterations=tf.maximum(limit + 1, 0))  # cond's bound, explicit
    scores, lengths = (x[:batch] for x in loop[7])
    tokens = tf.transpose(loop[8].stack(), (1, 0))[:batch]  # (batch, steps)
    attention = None
    if return_attention:
        attention = tf.transpose(loop[9].stack(), (1, 0, 2))[:batch, tf.newaxis]
    return SearchResult(tokens[:, tf.newaxis], lengths[:, tf.newaxis], scores[:, tf.newaxis],
                        attention)


def _full(rows: tf.Tensor, values: tf.Tensor, rest: tf.Tensor) -> tf.Tensor:
    """The active sentences' ``values`` placed at their batch ``rows`` of ``rest``."""
    return tf.tensor_scatter_nd_update(rest, rows[:, tf.newaxis], values)


# Row buckets: 1, 2, 4, 8, then multiples of 8 (see ``bucket_size``).
_SMALL_BUCKETS = (0, 1, 2, 4, 4, 8, 8, 8, 8)


def bucket_size(n):
    """The bucket ``n`` rows are padded up to when a search runs with ``bucket=True``:
    the next of 1, 2, 4, 8, 16, 24, 32, ... (0 for 0). Works on a Python int or an int32
    tensor."""
    if isinstance(n, int):
        return _SMALL_BUCKETS[n] if n <= 8 else -(-n // 8) * 8
    small = tf.gather(tf.constant(_SMALL_BUCKETS), tf.minimum(n, 8))
    return tf.where(n <= 8, small, (n + 7) // 8 * 8)


def _first_rows(batch: tf.Tensor, bucket: bool, real: tf.Tensor | None):
    """The first step's batch ``rows`` and the size of the full-size outputs: with
    ``bucket``, one more than ``batch``, a scratch row that padding rows write to (and
    that is cut off at the end)."""
    rows = tf.range(batch)
    if not bucket:
        return rows, batch
    if real is not None:
        rows = tf.where(real, rows, batch)
    return rows, batch + 1


def _next_rows(live: tf.Tensor, rows: tf.Tensor, batch: tf.Tensor, bucket: bool):
    """The next step's rows, from ``live`` ``(active,)``, the active rows that go on.

    Returns the indices (into the active rows) to gather the next step's tensors by,
    their batch rows, and whether anything moved (``False``: the gather is the
    identity and can be skipped). With ``bucket``, the live rows are followed by
    padding rows up to :func:`bucket_size`, so that the step function sees few distinct
    shapes (oneDNN, which bfloat16 needs, builds and keeps kernels per shape): rows that
    are done (their state is a valid one), else copies of a live row. A padding row
    writes its results to the scratch row ``batch``."""
    if bucket:
        live = tf.logical_and(live, rows < batch)
    keep = tf.cast(tf.where(live)[:, 0], tf.int32)
    if not bucket:
        return keep, tf.gather(rows, keep), tf.logical_not(tf.reduce_all(live))
    active = tf.size(rows)
    size = tf.size(keep)
    pad = bucket_size(size) - size
    spare = tf.cast(tf.where(tf.logical_not(live))[:, 0], tf.int32)
    index = tf.concat([keep, tf.concat([spare, tf.repeat(keep[:1], pad)], 0)[:pad]], 0)
    next_rows = tf.concat([tf.gather(rows, keep), tf.fill([pad], batch)], 0)
    changed = tf.cond(tf.equal(size + pad, active),
                      lambda: tf.reduce_any(tf.not_equal(index, tf.range(active))),
                      lambda: tf.constant(True))
    return index, next_rows, changed


def _top_k_last(x: tf.Tensor, k: int, chunk: int = 64) -> tf.Tensor:
    """The indices ``tf.math.top_k(x, k)`` gives over the last axis of a 2-D ``x`` (ties:
    lower index first), found in a fraction of its time for a long row such as a beam's
    ``beam * vocab`` candidates: ``top_k`` scans every entry, a ``reduce_max`` over chunks
    is vectorized.

    The row is cut into chunks of ``chunk``; its top k lie in the k chunks with the
    largest maxima (ties: lower chunk first), as each of those chunks holds an entry that
    ranks at least as high as anything in a chunk ranked below them. ``top_k`` then runs
    on those k chunks only, taken in their order along the row, so that ties still go to
    the lower index. A row holding NaN may get other indices than ``top_k`` gives it
    (NaN compares as neither larger nor smaller); the search's scores are never NaN unless
    the model's output is."""
    n = x.shape[-1]
    if n is None or n <= 4 * k * chunk:
        return tf.math.top_k(x, k=k).indices
    pad = -n % chunk
    if pad:  # padding after the last entry never ranks above a real one
        x = tf.concat([x, tf.fill([tf.shape(x)[0], pad], tf.constant(-np.inf, x.dtype))], 1)
    chunks = tf.reshape(x, [-1, (n + pad) // chunk, chunk])
    picked = tf.sort(tf.math.top_k(tf.reduce_max(chunks, axis=2), k=k).indices, axis=1)
    at = tf.math.top_k(tf.reshape(tf.gather(chunks, picked, batch_dims=1), [-1, k * chunk]),
                       k=k).indices
    return tf.gather(picked, at // chunk, batch_dims=1) * chunk + at % chunk


def _tile(x: tf.Tensor, beam: int) -> tf.Tensor:
    """``(batch, ...)`` -> ``(batch * beam, ...)``, each entry repeated ``beam`` times."""
    return tf.repeat(x, beam, axis=0)


def beam_search(
    step_fn: StepFn,
    state: Any,
    max_len: tf.Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    alpha: float = 0.0,
    n_best: int = 1,
    return_attention: bool = False,
    constant_keys: Sequence[str] = (),
    normalized: bool = False,
    bucket: bool = False,
    real: tf.Tensor | None = None,
) -> SearchResult:
    """Beam search with GNMT length penalty ``alpha``; returns the ``n_best`` best
    hypotheses per sentence, sorted by score (best first).

    ``constant_keys`` names entries of a dict ``state`` that never change between
    steps (e.g. the encoder memory): they are tiled once and not reordered, which
    saves copying them at every step. Each step records its tokens and back-pointers;
    the hypotheses (and their attention) are read back once, after the loop.
    ``normalized``: ``step_fn`` returns log-probabilities, not logits.

    ``bucket``: keep the number of active sentences at one of a few sizes (1, 2, 4, 8,
    then multiples of 8; :func:`bucket_size`) by running padding rows beside them, for
    backends that build kernels per shape. The results are unchanged. ``real``
    ``(batch,)`` bool marks the sentences to decode; the others (``False``) are padding
    that the caller added to bucket the batch itself: their results are meaningless.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be in [1, beam_size={beam_size}], got {n_best}")
    if alpha < 0:  # the early stop relies on the penalty growing with length
        raise ValueError(f"alpha (length penalty) must be >= 0, got {alpha}")
    k = beam_size
    batch = tf.shape(max_len)[0]
    limit = tf.reduce_max(max_len)
    state = tf.nest.map_structure(lambda x: _tile(x, k), state)
    constant = {key: state.pop(key) for key in constant_keys} if constant_keys else {}
    # The loop works on the *active* sentences only: ``rows`` holds their indices in the
    # batch, and a sentence leaves (its rows are gathered out of every tensor) once it is
    # settled (see below), so the step function runs on fewer rows as sentences end. What
    # the caller gets back is kept at full size: ``final`` holds every sentence's beam
    # scores, lengths and finished flags, and each step's history is written for the whole
    # batch, a settled sentence's as EOS padding with its beams in place (token 0, parent =
    # itself).
    rows, n_out = _first_rows(batch, bucket, real)
    beam_max = tf.reshape(_tile(max_len, k), [batch, k])
    log_probs = tf.tile(tf.constant([[0.0] + [NEG_INF] * (k - 1)]), [batch, 1])
    finished = tf.zeros([batch, k], tf.bool)
    lengths = tf.zeros([batch, k], tf.int32)
    tokens = tf.fill([batch * k], bos_id)
    final = (tf.tile(log_probs[:1], [n_out, 1]), tf.zeros([n_out, k], tf.int32),
             tf.zeros([n_out, k], tf.bool))
    history = (tf.TensorArray(tf.int32, size=0, dynamic_size=True),   # emitted tokens
               tf.TensorArray(tf.int32, size=0, dynamic_size=True),   # parent beams
               tf.TensorArray(tf.float32, size=0, dynamic_size=True))  # attention
    in_place = tf.tile(tf.range(k)[tf.newaxis], [n_out, 1])

    def cond(t, rows, *_):
        return tf.logical_and(t <= limit, tf.size(rows) > 0)

    def body(t, rows, tokens, state, constant, beam_max, log_probs, finished, lengths, final,
             history):
        active = tf.shape(rows)[0]

        logits, new_state, attention = step_fn(tokens, {**state, **constant})
        state = {key: new_state[key] for key in state} if constant_keys else new_state
        n_vocab = logits.shape[-1]  # static if the step function's output has it
        logp = tf.reshape(_step_log_probs(logits, normalized),
                          [active, k, -1 if n_vocab is None else n_vocab])
        vocab = tf.shape(logp)[2]
        eos_only = tf.where(tf.range(vocab) == eos_id, 0.0, NEG_INF)
        # finished beams and beams at their length limit may only emit EOS
        force = tf.logical_or(finished, t >= beam_max)
        logp = tf.where(force[:, :, tf.newaxis], eos_only[tf.newaxis, tf.newaxis], logp)
        total = log_probs[:, :, tf.newaxis] + logp  # (active, k, vocab)
        # EOS and finished beams do not lengthen a hypothesis; a candidate's length is
        # one of two per beam, so the penalty is computed per beam, not per token
        grows = tf.logical_and(tf.logical_not(finished)[:, :, tf.newaxis],
                               tf.not_equal(tf.range(vocab), eos_id)[tf.newaxis, tf.newaxis])
        inv_lp = tf.where(grows, 1.0 / length_penalty(lengths + 1, alpha)[:, :, tf.newaxis],
                          1.0 / length_penalty(lengths, alpha)[:, :, tf.newaxis])
        # the row's static width lets ``_top_k_last`` cut it into chunks
        width = -1 if n_vocab is None else k * n_vocab
        top_idx = _top_k_last(tf.reshape(total * inv_lp, [active, width]), k)
        parent = top_idx // vocab
        token = top_idx % vocab
        log_probs = tf.gather(tf.reshape(total, [active, -1]), top_idx, batch_dims=1)
        finished = tf.logical_or(tf.gather(finished, parent, batch_dims=1),
                                 tf.equal(token, eos_id))
        lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(
            tf.logical_not(finished), tf.int32)
        out_tokens, parents, attn = history
        out_tokens = out_tokens.write(
            t, _full(rows, tf.where(finished, 0, token), tf.zeros_like(in_place)))
        parents = parents.write(t, _full(rows, parent, in_place))
        if return_attention:
            # computed by the parent beams: store it under the surviving beams' slots
            attn_active = tf.gather(tf.reshape(tf.cast(attention, tf.float32), [active, k, -1]),
                                    parent, batch_dims=1)
            attn = attn.write(t, _full(rows, attn_active, tf.zeros(
                tf.concat([[n_out, k], tf.shape(attn_active)[2:]], 0))))
        final = (_full(rows, log_probs, final[0]), _full(rows, lengths, final[1]),
                 _full(rows, finished, final[2]))
        # A sentence is settled once its n_best-th finished hypothesis scores at least
        # what any live beam could still reach: log-probabilities only fall and the
        # length penalty is largest at the length limit, so ``log_prob / lp(max_len)``
        # bounds a live beam's final score. Stopping then returns exactly what
        # running on would (those finished beams can no longer leave the top k: a live
        # beam's candidates rank below that bound too).
        score = tf.where(finished, log_probs / length_penalty(lengths, alpha), -np.inf)
        nth_finished = tf.math.top_k(score, k=n_best).values[:, -1]
        bound = tf.reduce_max(
            tf.where(finished, -np.inf, log_probs / length_penalty(beam_max, alpha)), axis=1)
        settled = tf.logical_or(tf.reduce_all(finished, axis=1), nth_finished >= bound)
        # the active sentences' next rows: the surviving beams of the unsettled ones
        keep, next_rows, changed = _next_rows(tf.logical_not(settled), rows, batch, bucket)
        parent, token = tf.gather(parent, keep), tf.gather(token, keep)
        flat = tf.reshape(parent + (keep * k)[:, tf.newaxis], [-1])
        state = tf.nest.map_structure(lambda x: tf.gather(x, flat), state)
        if constant_keys:  # unchanged by the step; gathered only when the rows change
            beams = tf.reshape((keep * k)[:, tf.newaxis] + tf.range(k)[tf.newaxis], [-1])
            constant = tf.cond(changed,
                               lambda: tf.nest.map_structure(lambda x: tf.gather(x, beams),
                                                             constant),
                               lambda: constant)
        return (t + 1, next_rows, tf.reshape(token, [-1]), state, constant,
                tf.gather(beam_max, keep), tf.gather(log_probs, keep),
                tf.gather(finished, keep), tf.gather(lengths, keep), final,
                (out_tokens, parents, attn))

    loop_vars = (tf.constant(0), rows, tokens, state, constant, beam_max, log_probs, finished,
                 lengths, final, history)
    loop = tf.while_loop(cond, body, loop_vars, shape_invariants=_shrinking(loop_vars, 1, 9),
                         maximum_iterations=tf.maximum(limit + 1, 0))  # cond's bound, explicit
    log_probs, lengths, finished = (x[:batch] for x in loop[9])
    history = loop[10]
    scores = log_probs / length_penalty(lengths, alpha)
    # finished hypotheses first: a settled sentence's live beams stopped where they were,
    # and one that ties the n-best-th finished score exactly must not be returned cut off
    order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    done_first = tf.argsort(tf.cast(tf.gather(finished, order, batch_dims=1), tf.int32), axis=1,
                            direction="DESCENDING", stable=True)
    order = tf.gather(order, done_first, batch_dims=1)[:, :n_best]
    seqs, attention = _backtrack(history, order, return_attention, batch)
    return SearchResult(
        seqs,
        tf.gather(lengths, order, batch_dims=1),
        tf.gather(scores, order, batch_dims=1),
        attention,
    )


def _shrinking(loop_vars, first: int, stop: int):
    """``tf.while_loop`` shape invariants: the tensors of ``loop_vars[first:stop]`` may
    change their first dimension (the active rows) from one iteration to the next."""
    def loose(x):
        if isinstance(x, tf.TensorArray):
            return tf.TensorShape(None)
        return tf.TensorShape([None]).concatenate(x.shape[1:])

    def fixed(x):
        return tf.TensorShape(None) if isinstance(x, tf.TensorArray) else x.shape

    return tuple(tf.nest.map_structure(loose if first <= i < stop else fixed, v)
                 for i, v in enumerate(loop_vars))


def _backtrack(history, beams: tf.Tensor, return_attention: bool, batch: tf.Tensor):
    """Follow the back-pointers from the final ``beams`` ``(batch, n)`` to the first
    step (the history's rows past ``batch``, a scratch row, are left out); returns tokens
    ``(batch, n, steps)`` and attention ``(batch, n, steps, src_len)`` (or None)."""
    out_tokens, parents, attn = history
    steps = out_tokens.size()
    tokens_ta = tf.TensorArray(tf.int32, size=steps)
    attn_ta = tf.TensorArray(tf.float32, size=steps)

    def body(t, beams, tokens_ta, attn_ta):
        tokens_ta = tokens_ta.write(
            t, tf.gather(out_tokens.read(t)[:batch], beams, batch_dims=1))
        if return_attention:
            attn_ta = attn_ta.write(t, tf.gather(attn.read(t)[:batch], beams, batch_dims=1))
        return (t - 1, tf.gather(parents.read(t)[:batch], beams, batch_dims=1), tokens_ta,
                attn_ta)

    _, _, tokens_ta, attn_ta = tf.while_loop(
        lambda t, *_: t >= 0, body, (steps - 1, beams, tokens_ta, attn_ta),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]),
                          tf.TensorShape(None), tf.TensorShape(None)),
        maximum_iterations=steps)
    n = tf.shape(beams)[1]
    batch = tf.shape(beams)[0]
    seqs = tf.reshape(tf.transpose(tokens_ta.stack(), (1, 2, 0)), [batch, n, -1])
    attention = None
    if return_attention:
        attention = tf.transpose(attn_ta.stack(), (1, 2, 0, 3))
    return seqs, attention
