"""LSTM decoder with global attention and input feeding (Luong et al., 2015).

One decoder step (shared by teacher-forced training and by search):

1. ``x = embed(y_prev)``, concatenated with the previous attentional vector when
   ``input_feeding`` is on;
2. ``num_layers`` stacked LSTM cells (dropout between layers, residual from the
   second layer on);
3. attention of the top output over the encoder memory -> context;
4. attentional vector ``a = tanh(W [context; top])`` (fed to the next step);
5. logits ``= W_out a`` (optionally tied to the target embedding).

Training runs the same ``_cell`` in a ``tf.while_loop`` (``keras.ops.scan`` on the TF
backend would also stack every LSTM state at every step), so decoding sees exactly
what training trained. Dropout masks are drawn once per sentence and reused at every
step (variational dropout), which keeps random number generation out of the loop.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from translator.model.attention import Attention


@keras.saving.register_keras_serializable(package="translator")
class Decoder(keras.layers.Layer):
    """Attention decoder. State is a dict of tensors (see :meth:`initial_state`).

    Args:
        vocab_size, embed_dim: target vocabulary and embedding sizes.
        units: LSTM size, equal to the encoder's output features.
        num_layers: stacked LSTM cells.
        attention: score type (see :class:`Attention`); attention_units: its size.
        input_feeding: feed the previous attentional vector into the next step.
        dropout, embed_dropout: rates between layers / on embeddings.
        tie_embeddings: reuse the target embedding matrix as output projection.
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, num_layers: int = 1,
                 attention: str = "bahdanau", attention_units: int | None = None,
                 input_feeding: bool = True, dropout: float = 0.0, embed_dropout: float = 0.0,
                 tie_embeddings: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.units = units
        self.num_layers = num_layers
        self.attention_type = attention
        self.attention_units = attention_units
        self.input_feeding = input_feeding
        self.dropout = dropout
        self.embed_dropout = embed_dropout
        self.tie_embeddings = tie_embeddings
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(vocab_size, embed_dim, name="embedding",
                                                dtype=policy)
        self.cells = [keras.layers.LSTMCell(units, name=f"lstm_{i}", dtype=policy)
                      for i in range(num_layers)]
        self.attention = Attention(units, attention, attention_units, name="attention",
                                   dtype=policy)
        self.attention_out = keras.layers.Dense(units, activation="tanh", use_bias=False,
                                                name="attention_out", dtype=policy)
        self.bridge_h = keras.layers.Dense(num_layers * units, activation="tanh",
                                           name="bridge_h", dtype=policy)
        self.bridge_c = keras.layers.Dense(num_layers * units, name="bridge_c", dtype=policy)
        self.pre_output = None
        if tie_embeddings:
            if embed_dim != units:
                self.pre_output = keras.layers.Dense(embed_dim, use_bias=False,
                                                     name="pre_output", dtype=policy)
            self.output_proj = None
        else:
            self.output_proj = keras.layers.Dense(vocab_size, name="output", dtype=policy)
        # unseeded: drawn from the global seed (keras.utils.set_random_seed), so a resumed
        # run reseeds the decoder's dropout with the encoder's (Keras does not save its state)
        self.seed_generator = keras.random.SeedGenerator()

    def build(self, *args, **kwargs):
        self.embedding.build((None,))
        in_dim = self.embed_dim + (self.units if self.input_feeding else 0)
        for cell in self.cells:
            cell.build((None, in_dim))
            in_dim = self.units
        self.attention.build((None, self.units))
        self.attention_out.build((None, 2 * self.units))
        self.bridge_h.build((None, self.units))
        self.bridge_c.build((None, self.units))
        if self.pre_output is not None:
            self.pre_output.build((None, self.units))
        if self.output_proj is not None:
            self.output_proj.build((None, self.units))
        else:
            self.output_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros",
                                               name="output_bias")
        self.built = True

    # ------------------------------------------------------------------ state

    #: State entries that :meth:`step` passes through unchanged (searches need not
    #: reorder them between beams).
    CONSTANT_STATE = ("memory", "keys", "mask")

    def initial_state(self, memory, mask, final_state):
        """Decoder state for a new batch.

        Args:
            memory: encoder outputs ``(batch, src_len, units)``.
            mask: ``(batch, src_len)`` bool, true on real source tokens.
            final_state: encoder's final ``(h, c)``, each ``(batch, units)``.

        Returns:
            ``{"h": [(batch, units)] * layers, "c": [...], "feed": (batch, units),
            "memory", "keys", "mask"}``; the last three are constant during decoding.
        """
        h0 = ops.split(self.bridge_h(final_state[0]), self.num_layers, axis=-1)
        c0 = ops.split(self.bridge_c(final_state[1]), self.num_layers, axis=-1)
        batch = ops.shape(memory)[0]
        return {
            "h": list(h0),
            "c": list(c0),
            "feed": ops.zeros((batch, self.units), dtype=memory.dtype),
            "memory": memory,
            "keys": self.attention.keys(memory),
            "mask": mask,
        }

    # ------------------------------------------------------------------ one step

    def _cell(self, x, h, c, feed, memory, keys, mask, drop):
        """One step on embedded input ``x`` ``(batch, embed_dim)``; ``drop`` holds
        per-layer dropout masks (or None). Returns the new ``h``, ``c``, attentional
        vector ``(batch, units)`` and attention weights ``(batch, src_len)``."""
        if self.input_feeding:
            x = ops.concatenate([x, feed], axis=-1)
        new_h, new_c = [], []
        for i, cell in enumerate(self.cells):
            out, (hi, ci) = cell(x, [h[i], c[i]])
            new_h.append(hi)
            new_c.append(ci)
            if drop is not None:
                out = out * drop[i]
            x = out + x if i > 0 else out
        context, weights = self.attention(x, keys, memory, mask)
        attentional = self.attention_out(ops.concatenate([context, x], axis=-1))
        return new_h, new_c, attentional, weights

    def project(self, attentional):
        """Logits ``(..., vocab_size)`` from attentional vectors ``(..., units)``."""
        if self.output_proj is not None:
            return self.output_proj(attentional)
        x = attentional if self.pre_output is None else self.pre_output(attentional)
        logits = ops.matmul(x, ops.transpose(ops.cast(self.embedding.embeddings, x.dtype)))
        return logits + ops.cast(self.output_bias, logits.dtype)

    def step(self, tokens, state):
        """Decode one step (inference, no dropout).

        Args:
            tokens: ``(batch,)`` previous target ids.
            state: as returned by :meth:`initial_state` or a previous step.

        Returns:
            logits ``(batch, vocab_size)``, the new state, attention ``(batch, src_len)``.
        """
        x = self.embedding(tokens)
        h, c, feed, weights = self._cell(x, state["h"], state["c"], state["feed"],
                                         state["memory"], state["keys"], state["mask"], None)
        new_state = dict(state, h=h, c=c, feed=feed)
        return self.project(feed), new_state, weights

    # ------------------------------------------------------------------ teacher forcing

    def _dropout_mask(self, batch, rate):
        ones = ops.ones((batch, self.units), dtype=self.compute_dtype)
        return keras.random.dropout(ones, rate, seed=self.seed_generator)

    def call(self, target_in, state, training=False):
        """Teacher-forced decoding of ``target_in`` ``(batch, tgt_len)``.

        Returns logits ``(batch, tgt_len, vocab_size)``.
        """
        x = self.embedding(target_in)
        if training and self.embed_dropout > 0:
            x = keras.random.dropout(x, self.embed_dropout, seed=self.seed_generator)
        batch = ops.shape(target_in)[0]
        drop = None
        if training and self.dropout > 0:
            drop = [self._dropout_mask(batch, self.dropout) for _ in self.cells]
        memory, keys, mask = state["memory"], state["keys"], state["mask"]

        inputs = tf.transpose(x, (1, 0, 2))  # (tgt_len, batch, embed_dim)
        steps = tf.shape(inputs)[0]
        outputs = tf.TensorArray(self.compute_dtype, size=steps, element_shape=(None, self.units))

        def body(t, h, c, feed, outputs):
            h, c, feed, _ = self._cell(inputs[t], h, c, feed, memory, keys, mask, drop)
            return t + 1, h, c, feed, outputs.write(t, feed)

        *_, outputs = tf.while_loop(
            lambda t, *_: t < steps, body,
            (tf.constant(0), state["h"], state["c"], state["feed"], outputs),
            maximum_iterations=steps,  # XLA needs a bound for the gradient accumulators
        )
        feeds = outputs.stack()
        feeds = ops.transpose(feeds, (1, 0, 2))
        if training and self.dropout > 0:
            feeds = keras.random.dropout(feeds, self.dropout, seed=self.seed_generator)
        return self.project(feeds)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocab_size": self.vocab_size, "embed_dim": self.embed_dim, "units": self.units,
            "num_layers": self.num_layers, "attention": self.attention_type,
            "attention_units": self.attention_units, "input_feeding": self.input_feeding,
            "dropout": self.dropout, "embed_dropout": self.embed_dropout,
            "tie_embeddings": self.tie_embeddings,
        })
        return config
