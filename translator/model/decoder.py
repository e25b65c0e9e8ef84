"""LSTM decoder with global attention and input feeding (Luong et al., 2015).

One decoder step (shared by teacher-forced training and by search):

1. ``x = embed(y_prev)``, concatenated with the previous attentional vector when
   ``input_feeding`` is on;
2. ``num_layers`` stacked LSTM cells (dropout between layers, residual from the
   second layer on);
3. attention of the top output over the encoder memory -> context;
4. attentional vector ``a = tanh(W [context; top])`` (fed to the next step);
5. logits ``= W_out a`` (optionally tied to the target embedding).

Training runs the same ``_rnn`` and ``_attend`` in a ``tf.while_loop`` (``keras.ops.scan``
on the TF backend would also stack every LSTM state at every step), so decoding sees
exactly what training trained; only work that does not depend on the recurrence leaves
the loop: layer 0's input projection of the embeddings, and, without input feeding, the
attention (computed for all steps at once after the loop). Dropout masks are drawn once
per sentence and reused at every step (variational dropout), which keeps random number
generation out of the loop. Each replica of a distributed step draws its own masks
(:mod:`translator.model.dropout`).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from translator.model.attention import Attention
from translator.model.dropout import replica_dropout


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
        word_dropout: the probability that a target input token's whole embedding is
            zeroed in training (see :class:`~translator.model.encoder.Encoder`).
        tie_embeddings: reuse the target embedding matrix as output projection.
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, num_layers: int = 1,
                 attention: str = "bahdanau", attention_units: int | None = None,
                 input_feeding: bool = True, dropout: float = 0.0, embed_dropout: float = 0.0,
                 tie_embeddings: bool = False, word_dropout: float = 0.0, **kwargs):
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
        self.word_dropout = word_dropout
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

    def _input_projection(self, x):
        """``x W_x + b`` of the first LSTM layer for embedded inputs ``x`` ``(..., embed_dim)``:
        the part of its gate pre-activations that does not depend on the recurrence, so
        teacher forcing computes it for all time steps in one matmul."""
        cell = self.cells[0]
        kernel = ops.cast(cell.kernel[: self.embed_dim], x.dtype)
        return ops.matmul(x, kernel) + ops.cast(cell.bias, x.dtype)

    def _recurrent_weights(self, fused: bool):
        """Per layer, the weights applied to the recurrent inputs of :meth:`_cell`.

        Layer ``i > 0`` sees ``[x, h]`` and adds its bias. ``fused`` (the teacher-forced
        loop, which builds them once) concatenates each layer's matrices into one, for one
        matmul per step on concatenated inputs, and layer 0 sees ``[feed, h]`` (input
        feeding) or ``h``. Otherwise (``step``, once per search step, where slicing or
        concatenating the weights would copy them every step) each layer gets a tuple of
        whole matrices and layer 0 sees ``h`` only: ``step`` folds ``feed`` into its input
        projection.
        """
        dtype = self.compute_dtype
        weights = []
        for i, cell in enumerate(self.cells):
            parts = []
            if i > 0:
                parts.append(cell.kernel)
            elif self.input_feeding and fused:
                parts.append(cell.kernel[self.embed_dim:])
            parts.append(cell.recurrent_kernel)
            parts = [ops.cast(w, dtype) for w in parts]
            weights.append(ops.concatenate(parts, axis=0) if fused and len(parts) > 1
                           else tuple(parts))
        return weights

    @staticmethod
    def _lstm(z, c):
        """Keras ``LSTMCell`` gates (order i, f, c, o; sigmoid and tanh) on the summed
        pre-activations ``z`` ``(batch, 4 * units)``: returns the new ``h`` and ``c``."""
        i, f, g, o = ops.split(z, 4, axis=-1)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        return ops.sigmoid(o) * ops.tanh(c), c

    def _rnn(self, x_proj, h, c, feed, drop, weights):
        """The LSTM stack for one step from ``x_proj`` ``(batch, 4 * units)``, the first
        layer's projected input (:meth:`_input_projection`); ``feed``, the previous
        attentional vector for layer 0, or None when input feeding is off or ``x_proj``
        already holds it (``step``); ``drop`` holds per-layer dropout masks (or None);
        ``weights`` from :meth:`_recurrent_weights` (fused only with ``feed``). Returns the
        new ``h``, ``c`` and the top layer's output ``(batch, units)``.

        Computes what ``keras.layers.LSTMCell`` computes with the same variables, so
        checkpoints are unchanged, but with the embedding part of layer 0 hoisted out of
        the time loop and the recurrent matmuls merged.
        """
        new_h, new_c = [], []
        x = None
        for i, cell in enumerate(self.cells):
            inputs = [h[i]]
            if i > 0:
                inputs.insert(0, x)
            elif feed is not None:
                inputs.insert(0, feed)
            w = weights[i]
            if isinstance(w, tuple):
                z = ops.matmul(inputs[0], w[0])
                for a, k in zip(inputs[1:], w[1:], strict=True):
                    z = z + ops.matmul(a, k)
            else:
                z = ops.matmul(ops.concatenate(inputs, axis=-1), w)
            z = z + (x_proj if i == 0 else ops.cast(cell.bias, z.dtype))
            out, ci = self._lstm(z, c[i])
            new_h.append(out)
            new_c.append(ci)
            if drop is not None:
                out = out * drop[i]
            x = out + x if i > 0 else out
        return new_h, new_c, x

    def _attend(self, x, memory, keys, mask):
        """Attentional vectors ``tanh(W [context; x])`` and attention weights for the
        top LSTM outputs ``x``: one step ``(batch, units)`` or all steps at once
        ``(batch, tgt_len, units)``."""
        attend = self.attention if len(x.shape) == 2 else self.attention.attend_sequence
        context, weights = attend(x, keys, memory, mask)
        return self.attention_out(ops.concatenate([context, x], axis=-1)), weights

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
        # layer 0's whole input projection, ``[x; feed] W + b`` as in ``LSTMCell``: slicing
        # the kernel into embedding and feed rows would copy it at every search step
        cell = self.cells[0]
        x = self.embedding(tokens)
        if self.input_feeding:
            x = ops.concatenate([x, state["feed"]], axis=-1)
        x_proj = ops.matmul(x, ops.cast(cell.kernel, x.dtype)) + ops.cast(cell.bias, x.dtype)
        h, c, top = self._rnn(x_proj, state["h"], state["c"], None, None,
                              self._recurrent_weights(fused=False))
        feed, weights = self._attend(top, state["memory"], state["keys"], state["mask"])
        new_state = dict(state, h=h, c=c, feed=feed)
        return self.project(feed), new_state, weights

    # ------------------------------------------------------------------ teacher forcing

    def _dropout_mask(self, batch, rate):
        ones = ops.ones((batch, self.units), dtype=self.compute_dtype)
        return replica_dropout(ones, rate, self.seed_generator)

    def call(self, target_in, state, training=False):
        """Teacher-forced decoding of ``target_in`` ``(batch, tgt_len)``.

        Returns logits ``(batch, tgt_len, vocab_size)``.
        """
        x = self.embedding(target_in)
        if training and self.word_dropout > 0:
            x = replica_dropout(x, self.word_dropout, self.seed_generator,
                                noise_shape=(None, None, 1))
        if training and self.embed_dropout > 0:
            x = replica_dropout(x, self.embed_dropout, self.seed_generator)
        batch = ops.shape(target_in)[0]
        drop = None
        if training and self.dropout > 0:
            drop = [self._dropout_mask(batch, self.dropout) for _ in self.cells]
        memory, keys, mask = state["memory"], state["keys"], state["mask"]

        # layer 0's input projection for every step at once, read back one step at a time
        # from a TensorArray: the gradient of ``inputs[t]`` on a tensor would build a
        # zero-padded (tgt_len, batch, 4 * units) tensor at every step
        projected = tf.transpose(self._input_projection(x), (1, 0, 2))
        steps = tf.shape(projected)[0]
        inputs = tf.TensorArray(projected.dtype, size=steps,
                                element_shape=(None, 4 * self.units)).unstack(projected)
        weights = self._recurrent_weights(fused=True)
        outputs = tf.TensorArray(self.compute_dtype, size=steps, element_shape=(None, self.units))

        def body(t, h, c, feed, outputs):
            h, c, top = self._rnn(inputs.read(t), h, c, feed if self.input_feeding else None,
                                  drop, weights)
            if self.input_feeding:  # the next step needs this step's attention
                feed, _ = self._attend(top, memory, keys, mask)
                top = feed
            return t + 1, h, c, feed, outputs.write(t, top)

        *_, outputs = tf.while_loop(
            lambda t, *_: t < steps, body,
            (tf.constant(0), state["h"], state["c"], state["feed"], outputs),
            maximum_iterations=steps,  # XLA needs a bound for the gradient accumulators
        )
        feeds = ops.transpose(outputs.stack(), (1, 0, 2))
        if not self.input_feeding:
            # the recurrence does not depend on attention: attend for all steps at once
            feeds, _ = self._attend(feeds, memory, keys, mask)
        if training and self.dropout > 0:
            feeds = replica_dropout(feeds, self.dropout, self.seed_generator)
        return self.project(feeds)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocab_size": self.vocab_size, "embed_dim": self.embed_dim, "units": self.units,
            "num_layers": self.num_layers, "attention": self.attention_type,
            "attention_units": self.attention_units, "input_feeding": self.input_feeding,
            "dropout": self.dropout, "embed_dropout": self.embed_dropout,
            "tie_embeddings": self.tie_embeddings, "word_dropout": self.word_dropout,
        })
        return config
