"""The encoder-decoder model: ``encode`` / ``initial_state`` / ``step`` / ``call``."""

from __future__ import annotations

import keras

from translator.model.decoder import Decoder
from translator.model.encoder import Encoder


@keras.saving.register_keras_serializable(package="translator")
class Seq2Seq(keras.Model):
    """Bidirectional-LSTM encoder + attention LSTM decoder.

    ``call({"source_ids", "target_in"})`` returns teacher-forced logits
    ``(batch, tgt_len, tgt_vocab_size)``; :meth:`step` decodes one token at a time with
    the same weights and code path. The model knows nothing of files, tokenizers or
    configs: it takes ids (0 = padding) and sizes.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_dim: int = 256,
                 hidden_size: int = 512, encoder_layers: int = 1, decoder_layers: int = 1,
                 attention: str = "bahdanau", attention_units: int | None = None,
                 input_feeding: bool = True, dropout: float = 0.2, embed_dropout: float = 0.1,
                 tie_embeddings: bool = False, word_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.embed_dim = embed_dim
        self.hidden_size = hidden_size
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.attention = attention
        self.attention_units = attention_units
        self.input_feeding = input_feeding
        self.dropout = dropout
        self.embed_dropout = embed_dropout
        self.tie_embeddings = tie_embeddings
        self.word_dropout = word_dropout
        self.encoder = Encoder(src_vocab_size, embed_dim, hidden_size, encoder_layers,
                               dropout=dropout, embed_dropout=embed_dropout,
                               word_dropout=word_dropout, name="encoder",
                               dtype=self.dtype_policy)
        self.decoder = Decoder(tgt_vocab_size, embed_dim, hidden_size, decoder_layers,
                               attention=attention, attention_units=attention_units,
                               input_feeding=input_feeding, dropout=dropout,
                               embed_dropout=embed_dropout, tie_embeddings=tie_embeddings,
                               word_dropout=word_dropout, name="decoder",
                               dtype=self.dtype_policy)

    def build(self, inputs_shape=None):
        self.encoder.build((None, None))
        self.decoder.build()
        self.built = True

    def encode(self, source_ids, training=False):
        """Run the encoder once and return the decoder's initial state (see
        :meth:`Decoder.initial_state`)."""
        memory, mask, final = self.encoder(source_ids, training=training)
        return self.decoder.initial_state(memory, mask, final)

    def step(self, tokens, state):
        """``(batch,)`` previous tokens -> logits ``(batch, vocab)``, state, attention
        ``(batch, src_len)``."""
        return self.decoder.step(tokens, state)

    def call(self, inputs, training=False):
        state = self.encode(inputs["source_ids"], training=training)
        return self.decoder(inputs["target_in"], state, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
            "src_vocab_size": self.src_vocab_size, "tgt_vocab_size": self.tgt_vocab_size,
            "embed_dim": self.embed_dim, "hidden_size": self.hidden_size,
            "encoder_layers": self.encoder_layers, "decoder_layers": self.decoder_layers,
            "attention": self.attention, "attention_units": self.attention_units,
            "input_feeding": self.input_feeding, "dropout": self.dropout,
            "embed_dropout": self.embed_dropout, "tie_embeddings": self.tie_embeddings,
            "word_dropout": self.word_dropout,
        })
        return config


def build_model(cfg, src_vocab_size: int, tgt_vocab_size: int,
                dtype: str | None = None) -> Seq2Seq:
    """The one adapter from ``ModelConfig`` to layer arguments.

    ``dtype`` (default: Keras' global policy) is the policy of the whole model. With
    ``"bfloat16"`` (variables and arithmetic in bfloat16: decoding only, the weights are
    loaded into it after) the LSTMs' orthogonal initializers are replaced by zeros: their QR
    has no bfloat16 kernel, and the loaded weights overwrite them anyway."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = Seq2Seq(
        src_vocab_size=src_vocab_size,
        tgt_vocab_size=tgt_vocab_size,
        embed_dim=cfg.embed_dim,
        hidden_size=cfg.hidden_size,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        attention=cfg.attention,
        attention_units=cfg.attention_units,
        input_feeding=cfg.input_feeding,
        dropout=cfg.dropout,
        embed_dropout=cfg.embed_dropout,
        tie_embeddings=cfg.tie_embeddings,
        word_dropout=cfg.word_dropout,
        **kwargs,
    )
    if dtype == "bfloat16":
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.LSTMCell):
                layer.recurrent_initializer = keras.initializers.Zeros()
    model.build()
    return model
