"""Keras layers of the translation model; they take ids and sizes, never files."""

from translator.model.attention import Attention
from translator.model.decoder import Decoder
from translator.model.encoder import Encoder
from translator.model.seq2seq import Seq2Seq, build_model

__all__ = ["Attention", "Decoder", "Encoder", "Seq2Seq", "build_model"]
