"""Analytic FLOP counts (2 x multiply-adds of the matmuls) for benchmarks.

``m`` is anything with the model's size attributes: a ``ModelConfig`` or a ``Seq2Seq``.
"""

from __future__ import annotations


def decoder_step_flops(m, tgt_vocab: int, src_len: float) -> float:
    """Forward FLOPs of one decoder step for one hypothesis."""
    h, e = m.hidden_size, m.embed_dim
    a = m.attention_units or h
    flops, in_dim = 0.0, e + (h if m.input_feeding else 0)
    for _ in range(m.decoder_layers):
        flops += 2 * (in_dim + h) * 4 * h
        in_dim = h
    score = (2 * h * a + 3 * a * src_len) if m.attention == "bahdanau" else 2 * h * src_len
    return flops + score + 2 * h * src_len + 2 * 2 * h * h + 2 * h * tgt_vocab


def encoder_flops_per_source_token(m) -> float:
    """Forward FLOPs of the encoder (both directions) plus the attention keys, per token."""
    h, half = m.hidden_size, m.hidden_size // 2
    flops, in_dim = 0.0, m.embed_dim
    for _ in range(m.encoder_layers):
        flops += 2 * 2 * (in_dim + half) * 4 * half
        in_dim = h
    a = m.attention_units or h
    if m.attention == "bahdanau":
        flops += 2 * h * a
    elif m.attention == "luong_general":
        flops += 2 * h * h
    return flops


def forward_flops_per_target_token(m, tgt_vocab: int, src_len: float, tgt_len: float) -> float:
    """Teacher-forced forward FLOPs per target token, the encoder spread over them."""
    return (decoder_step_flops(m, tgt_vocab, src_len)
            + encoder_flops_per_source_token(m) * src_len / tgt_len)
