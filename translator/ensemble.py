"""Ensemble decoding: several models that share a tokenizer decode as one.

At every step each member scores the same prefix; the ensemble's distribution is the mean
of the members' log-probabilities (``log_softmax`` of each member's logits, then the
mean, not renormalized: what OpenNMT-py and Marian do with equal weights). The mean of
logits would be a different model (members' logits are on arbitrary scales). The
ensemble's attention is the mean of the members' attention weights (each row still sums
to 1 over the source), which is what ``--attention-plot`` and ``return_attention`` show.

:class:`Ensemble` offers what the searches of :mod:`translator.decoding` need, like a
:class:`~translator.model.Seq2Seq`: ``encode(source_ids) -> state`` and
``step(tokens, state) -> (log-probabilities, state, attention)``, to be searched with
``normalized=True``. Its state is one dict whose keys are the members' keys prefixed with
the member's index (``"0/h"``, ``"1/memory"``, ...), so a beam search reorders every
member's state with one ``tf.gather`` per tensor and keeps each member's constant entries
(``constant_keys``) out of the reordering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from translator.decoding import to_log_probs


def _key(member: int, key: str) -> str:
    return f"{member}/{key}"


class Ensemble:
    """Decode with the mean log-probabilities of ``models`` (two or more), which must share
    the target vocabulary (the caller checks that they share the tokenizer)."""

    def __init__(self, models: Sequence[Any]):
        if len(models) < 2:
            raise ValueError(f"an ensemble needs two or more models, got {len(models)}")
        self.models = list(models)
        self.constant_keys = tuple(
            _key(i, key) for i, model in enumerate(self.models)
            for key in getattr(model.decoder, "CONSTANT_STATE", ()))

    def encode(self, source_ids) -> dict[str, Any]:
        """Every member's initial decoder state, in one dict (keys ``"i/key"``)."""
        state = {}
        for i, model in enumerate(self.models):
            for key, value in model.encode(source_ids).items():
                state[_key(i, key)] = value
        return state

    def _member_state(self, state: dict[str, Any], i: int) -> dict[str, Any]:
        prefix = f"{i}/"
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def step(self, tokens, state):
        """``(batch,)`` previous tokens -> mean log-probabilities ``(batch, vocab)``,
        state, mean attention ``(batch, src_len)``."""
        scores, attentions, new_state = [], [], {}
        for i, model in enumerate(self.models):
            logits, member_state, attention = model.step(tokens, self._member_state(state, i))
            scores.append(to_log_probs(logits))
            attentions.append(tf.cast(attention, tf.float32))
            for key, value in member_state.items():
                new_state[_key(i, key)] = value
        return tf.reduce_mean(tf.stack(scores), 0), new_state, tf.reduce_mean(tf.stack(attentions), 0)
