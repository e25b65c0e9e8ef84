"""Source encoder: embeddings + stacked bidirectional LSTMs."""

from __future__ import annotations

import keras
from keras import ops

from translator.model.dropout import ReplicaDropout, replica_dropout


@keras.saving.register_keras_serializable(package="translator")
class Encoder(keras.layers.Layer):
    """Embeds source ids and runs ``num_layers`` bidirectional LSTMs.

    Each direction has ``units // 2`` cells, so outputs have ``units`` features.
    Dropout is applied between layers; from the second layer on each layer's output
    is added to its input (residual connection). Id 0 is padding and is masked.

    Args:
        vocab_size, embed_dim: source vocabulary and embedding sizes.
        units: output features (forward and backward concatenated).
        num_layers: stacked bidirectional layers.
        dropout: between layers; embed_dropout: on the embeddings.
        word_dropout: the probability that a source token's whole embedding is zeroed in
            training (word dropout; the kept ones are scaled by ``1 / (1 - rate)``).
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, num_layers: int = 1,
                 dropout: float = 0.0, embed_dropout: float = 0.0, word_dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.units = units
        self.num_layers = num_layers
        self.dropout = dropout
        self.embed_dropout = embed_dropout
        self.word_dropout = word_dropout
        self.supports_masking = True
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(vocab_size, embed_dim, mask_zero=True,
                                                name="embedding", dtype=policy)
        self.embedding_dropout = ReplicaDropout(embed_dropout, name="embedding_dropout",
                                                dtype=policy)
        self.rnns = [
            keras.layers.Bidirectional(
                keras.layers.LSTM(units // 2, return_sequences=True, return_state=True,
                                  dtype=policy),
                name=f"bilstm_{i}", dtype=policy,
            )
            for i in range(num_layers)
        ]
        self.layer_dropout = ReplicaDropout(dropout, name="layer_dropout", dtype=policy)
        # only with word dropout: an unseeded generator draws its seed from the global
        # one, which would move the other layers' dropout streams
        self.word_seed_generator = (keras.random.SeedGenerator() if word_dropout > 0
                                    else None)

    def build(self, source_shape=None):
        self.embedding.build((None, None))
        in_dim = self.embed_dim
        for rnn in self.rnns:
            rnn.build((None, None, in_dim))
            in_dim = self.units
        self.built = True

    def call(self, source_ids, training=False):
        """Encode ``source_ids`` ``(batch, src_len)``.

        Returns:
            memory ``(batch, src_len, units)``, mask ``(batch, src_len)`` (bool), and
            the last layer's final ``(h, c)``, each ``(batch, units)`` (forward and
            backward concatenated).
        """
        mask = ops.not_equal(source_ids, 0)
        x = self.embedding(source_ids)
        if training and self.word_dropout > 0:  # whole tokens: one draw per (sentence, token)
            x = replica_dropout(x, self.word_dropout, self.word_seed_generator,
                                noise_shape=(None, None, 1))
        x = self.embedding_dropout(x, training=training)
        h = c = None
        for i, rnn in enumerate(self.rnns):
            out, h_f, c_f, h_b, c_b = rnn(x, mask=mask, training=training)
            if i > 0:
                out = out + x
            x = self.layer_dropout(out, training=training) if i < self.num_layers - 1 else out
            h = ops.concatenate([h_f, h_b], axis=-1)
            c = ops.concatenate([c_f, c_b], axis=-1)
        return x, mask, (h, c)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocab_size": self.vocab_size, "embed_dim": self.embed_dim, "units": self.units,
            "num_layers": self.num_layers, "dropout": self.dropout,
            "embed_dropout": self.embed_dropout, "word_dropout": self.word_dropout,
        })
        return config
