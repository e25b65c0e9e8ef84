import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.model import Seq2Seq

SRC = np.array([[5, 6, 7, 8, 3, 0, 0], [9, 10, 3, 0, 0, 0, 0]], np.int32)
TIN = np.array([[2, 11, 12, 13, 0], [2, 14, 0, 0, 0]], np.int32)


def make(attention="bahdanau", **kw):
    args = dict(embed_dim=16, hidden_size=32, encoder_layers=2, decoder_layers=2,
                attention=attention, dropout=0.3, embed_dropout=0.1)
    args.update(kw)
    model = Seq2Seq(40, 50, **args)
    model.build()
    return model


@pytest.mark.parametrize("attention", ["bahdanau", "luong_dot", "luong_general"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_output_shapes(attention, input_feeding):
    model = make(attention, input_feeding=input_feeding)
    logits = model({"source_ids": SRC, "target_in": TIN})
    assert tuple(logits.shape) == (2, 5, 50)
    state = model.encode(SRC)
    step_logits, state, weights = model.step(np.array([2, 2], np.int32), state)
    assert tuple(step_logits.shape) == (2, 50)
    assert tuple(weights.shape) == (2, 7)
    # step and teacher-forced call share weights and code: same first-step logits
    np.testing.assert_allclose(step_logits.numpy(), logits.numpy()[:, 0], atol=1e-5)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_dot", "luong_general"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_search_steps_reproduce_teacher_forcing_at_every_position(attention, input_feeding):
    # teacher forcing hoists layer 0's input projection out of the loop and, without
    # input feeding, attends for all steps at once; step() does neither
    model = make(attention, input_feeding=input_feeding)
    logits = model({"source_ids": SRC, "target_in": TIN}).numpy()
    state = model.encode(SRC)
    for t in range(TIN.shape[1]):
        step_logits, state, _ = model.step(TIN[:, t], state)
        real = TIN[:, t] != 0
        np.testing.assert_allclose(step_logits.numpy()[real], logits[real, t], atol=1e-5)


def test_decoder_lstm_computes_what_keras_lstm_cell_computes():
    decoder = make(decoder_layers=1).decoder
    cell = decoder.cells[0]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, cell.kernel.shape[0])).astype(np.float32)
    h, c = (rng.normal(size=(3, 32)).astype(np.float32) for _ in range(2))
    want_h, (_, want_c) = cell(x, [h, c])
    z = x @ cell.kernel.numpy() + h @ cell.recurrent_kernel.numpy() + cell.bias.numpy()
    got_h, got_c = decoder._lstm(z, c)
    np.testing.assert_allclose(got_h, want_h, atol=1e-6)
    np.testing.assert_allclose(got_c, want_c, atol=1e-6)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_dot", "luong_general"])
def test_padding_does_not_change_outputs(attention):
    model = make(attention)
    alone = model({"source_ids": SRC[1:, :3], "target_in": TIN[1:, :2]}).numpy()
    padded = model({"source_ids": SRC, "target_in": TIN}).numpy()[1:, :2]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_dot", "luong_general"])
def test_attention_weights_sum_to_one_over_real_tokens(attention):
    model = make(attention)
    state = model.encode(SRC)
    tokens = np.array([2, 2], np.int32)
    for _ in range(3):
        logits, state, weights = model.step(tokens, state)
        w = weights.numpy()
        mask = SRC != 0
        np.testing.assert_allclose((w * mask).sum(1), 1.0, atol=1e-5)
        assert np.abs(w[~mask]).max() < 1e-6
        tokens = np.argmax(logits.numpy(), -1).astype(np.int32)


def test_tied_embeddings_share_the_matrix():
    model = make(tie_embeddings=True)
    names = [w.path for w in model.weights]
    assert not any("decoder/output/kernel" in n for n in names)
    assert any("pre_output" in n for n in names)  # embed_dim 16 != hidden 32
    assert tuple(model({"source_ids": SRC, "target_in": TIN}).shape) == (2, 5, 50)


def test_get_config_from_config_and_keras_file_reproduce_logits(tmp_path):
    model = make("luong_general", tie_embeddings=True)
    inputs = {"source_ids": SRC, "target_in": TIN}
    expected = model(inputs).numpy()
    clone = Seq2Seq.from_config(model.get_config())
    clone.build()
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(inputs).numpy(), expected)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(inputs).numpy(), expected)


def test_training_mode_uses_dropout_inference_does_not():
    model = make()
    inputs = {"source_ids": SRC, "target_in": TIN}
    a, b = model(inputs).numpy(), model(inputs).numpy()
    np.testing.assert_array_equal(a, b)
    c = model(inputs, training=True).numpy()
    assert np.abs(a - c).max() > 1e-4


def test_first_loss_is_about_log_vocab():
    from translator.training import SmoothedCrossEntropy

    vocab = 500
    model = Seq2Seq(vocab, vocab, embed_dim=32, hidden_size=64)
    model.build()
    rng = np.random.default_rng(0)
    src = rng.integers(4, vocab, (16, 10)).astype(np.int32)
    tout = rng.integers(4, vocab, (16, 8)).astype(np.int32)
    tin = np.concatenate([np.full((16, 1), 2, np.int32), tout[:, :-1]], 1)
    loss = SmoothedCrossEntropy(0.0)(tout, model({"source_ids": src, "target_in": tin}),
                                     sample_weight=np.ones(tout.shape, np.float32))
    assert float(loss) == pytest.approx(math.log(vocab), rel=0.05)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_xla_training_step_matches_plain(attention):
    # train.jit_compile: the whole train step (encoder, decoder loop, attention) must
    # compile with XLA and compute what the plain graph computes
    from translator.config import TrainConfig
    from translator.training import compile_model

    tout = np.concatenate([TIN[:, 1:], np.zeros((2, 1), np.int32)], 1)
    weight = (tout != 0).astype(np.float32)
    losses, weights = [], []
    for jit in (False, True):
        keras.utils.set_random_seed(7)
        model = make(attention, dropout=0.0, embed_dropout=0.0)
        compile_model(model, TrainConfig(jit_compile=jit, warmup_steps=0))
        # unknown batch and time dimensions, as the real pipeline yields them
        spec = ({"source_ids": tf.TensorSpec([None, None], tf.int32),
                 "target_in": tf.TensorSpec([None, None], tf.int32)},
                tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32))
        ds = tf.data.Dataset.from_generator(
            lambda: iter([({"source_ids": SRC, "target_in": TIN}, tout, weight)] * 3),
            output_signature=spec).apply(tf.data.experimental.assert_cardinality(3))
        history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
        losses.append(history.history["loss"][0])
        weights.append(model.get_weights())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    for plain, xla in zip(*weights, strict=True):
        np.testing.assert_allclose(plain, xla, atol=1e-4)


def test_word_dropout_zeroes_whole_tokens_in_training_only(monkeypatch):
    """``word_dropout`` zeroes a token's whole embedding (source tokens and target input
    tokens alike, each with its own draw) and scales the kept ones by 1 / (1 - rate); it
    runs in training only, and without it training mode is inference here (no other
    dropout)."""
    import translator.model.decoder as decoder_module
    import translator.model.encoder as encoder_module

    inputs = {"source_ids": SRC, "target_in": TIN}
    plain = make(dropout=0.0, embed_dropout=0.0)
    np.testing.assert_allclose(plain(inputs, training=True).numpy(), plain(inputs).numpy(),
                               rtol=1e-6, atol=1e-6)
    seen = []
    for module in (encoder_module, decoder_module):
        real = module.replica_dropout

        def spy(x, rate, gen, noise_shape=None, real=real, name=module.__name__):
            out = real(x, rate, gen, noise_shape)
            seen.append((name, rate, noise_shape, x.numpy(), out.numpy()))
            return out

        monkeypatch.setattr(module, "replica_dropout", spy)
    model = make(dropout=0.0, embed_dropout=0.0, word_dropout=0.5)
    model.set_weights(plain.get_weights())
    np.testing.assert_array_equal(model(inputs).numpy(), plain(inputs).numpy())
    assert seen == []  # inference: never drawn
    dropped = kept = 0
    for _ in range(10):
        assert np.abs(model(inputs, training=True).numpy() - plain(inputs).numpy()).max() > 1e-4
    assert {name for name, *_ in seen} == {"translator.model.encoder", "translator.model.decoder"}
    for _, rate, noise_shape, x, out in seen:
        assert rate == 0.5 and noise_shape == (None, None, 1)
        zero = np.all(out == 0, axis=-1)
        np.testing.assert_allclose(out[~zero], 2 * x[~zero], rtol=1e-6)
        dropped += zero.sum()
        kept += (~zero).sum()
    assert 0.35 < dropped / (dropped + kept) < 0.65, (dropped, kept)
    config = model.get_config()
    assert config["word_dropout"] == 0.5
    assert Seq2Seq.from_config(config).encoder.word_dropout == 0.5
