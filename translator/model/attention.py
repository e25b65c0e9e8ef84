"""Masked attention over the encoder memory: additive (Bahdanau) and multiplicative
(Luong ``dot`` / ``general``) scores.

The layer is split in two so the decoder can reuse work across time steps:
``keys(memory)`` projects the memory once per sentence, ``call(query, keys, memory,
mask)`` scores one decoder step.
"""

from __future__ import annotations

import keras
from keras import ops

SCORES = ("bahdanau", "luong_dot", "luong_general")

#: Added to the scores of padding positions before the softmax.
NEG_INF = -1e9


@keras.saving.register_keras_serializable(package="translator")
class Attention(keras.layers.Layer):
    """Global attention with an explicit source mask.

    Args:
        units: feature size of the query and of the memory.
        score: ``"bahdanau"`` (``v . tanh(W_q q + W_k m)``), ``"luong_dot"``
            (``q . m``) or ``"luong_general"`` (``q . W m``).
        attention_units: hidden size of the additive score (default ``units``).
    """

    def __init__(self, units: int, score: str = "bahdanau", attention_units: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.units = units
        self.score = score
        self.attention_units = attention_units
        self.query_dense = self.key_dense = self.v = None
        if score == "bahdanau":
            a = attention_units or units
            self.query_dense = keras.layers.Dense(a, use_bias=False, name="query", dtype=self.dtype_policy)
            self.key_dense = keras.layers.Dense(a, use_bias=True, name="key", dtype=self.dtype_policy)
            self.v = keras.layers.Dense(1, use_bias=False, name="v", dtype=self.dtype_policy)
        elif score == "luong_general":
            self.key_dense = keras.layers.Dense(units, use_bias=False, name="key", dtype=self.dtype_policy)

    def build(self, query_shape=None, *args, **kwargs):
        if self.key_dense is not None:
            self.key_dense.build((None, None, self.units))
        if self.query_dense is not None:
            self.query_dense.build((None, self.units))
            self.v.build((None, None, self.attention_units or self.units))
        self.built = True

    def keys(self, memory):
        """Project the memory once: ``(batch, src_len, units)`` -> keys for :meth:`call`."""
        return memory if self.key_dense is None else self.key_dense(memory)

    def call(self, query, keys, memory, mask):
        """Attend with one query per sentence.

        Args:
            query: ``(batch, units)``.
            keys: ``(batch, src_len, k)`` from :meth:`keys`.
            memory: ``(batch, src_len, units)``, the values.
            mask: ``(batch, src_len)``, true on real source tokens.

        Returns:
            context ``(batch, units)`` and weights ``(batch, src_len)`` that sum to 1
            over real tokens and are 0 on padding.
        """
        if self.score == "bahdanau":
            hidden = ops.tanh(keys + ops.expand_dims(self.query_dense(query), 1))
            # einsum on the kernel rather than Dense on a 3-D tensor: Dense would build
            # a dynamic-shape Tensordot that XLA rejects inside the decoder loop
            v = ops.cast(self.v.kernel[:, 0], hidden.dtype)
            scores = ops.einsum("bsa,a->bs", hidden, v)
        else:
            scores = ops.einsum("bh,bsh->bs", query, keys)
        scores = ops.cast(scores, "float32")
        scores = ops.where(mask, scores, NEG_INF)
        weights = ops.softmax(scores, axis=-1)
        context = ops.einsum("bs,bsh->bh", ops.cast(weights, memory.dtype), memory)
        return context, weights

    def attend_sequence(self, queries, keys, memory, mask):
        """Attend with ``tgt_len`` queries per sentence at once.

        Args:
            queries: ``(batch, tgt_len, units)``; keys, memory, mask: as in :meth:`call`.

        Returns:
            contexts ``(batch, tgt_len, units)`` and weights ``(batch, tgt_len, src_len)``.
        """
        if self.score == "bahdanau":
            projected = self.query_dense(queries)  # (batch, tgt_len, a)
            hidden = ops.tanh(ops.expand_dims(keys, 1) + ops.expand_dims(projected, 2))
            v = ops.cast(self.v.kernel[:, 0], hidden.dtype)
            scores = ops.einsum("btsa,a->bts", hidden, v)
        else:
            scores = ops.matmul(queries, ops.transpose(keys, (0, 2, 1)))
        scores = ops.cast(scores, "float32")
        scores = ops.where(ops.expand_dims(mask, 1), scores, NEG_INF)
        weights = ops.softmax(scores, axis=-1)
        context = ops.matmul(ops.cast(weights, memory.dtype), memory)
        return context, weights

    def get_config(self):
        config = super().get_config()
        config.update(
            {"units": self.units, "score": self.score, "attention_units": self.attention_units}
        )
        return config
