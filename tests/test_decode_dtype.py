"""decode.dtype=bfloat16: the weights cast once at load, decoding in bfloat16, on the tiny
memorized run (training stays float32)."""

import numpy as np
import pytest
import tensorflow as tf

from translator.translator import Translator

BF16 = ["decode.dtype=bfloat16"]


def _dtypes(model):
    return {str(w.dtype) for w in model.weights}


def test_bfloat16_weights_translate_what_float32_does(memorized_run, run_cli):
    run, src, tgt = memorized_run["run_dir"], memorized_run["src"], memorized_run["tgt"]
    f32 = Translator.load(run)
    bf16 = Translator.load(run, overrides=BF16)
    assert _dtypes(f32.model) == {"float32"}
    assert _dtypes(bf16.model) == {"bfloat16"}
    assert bf16.decode.dtype == "bfloat16"
    # the loaded weights are the float32 checkpoint's, rounded (not the zeros that replace
    # the orthogonal initializer)
    for a, b in zip(f32.model.weights, bf16.model.weights, strict=True):
        ref = a.numpy()
        got = b.numpy().astype(np.float32)
        assert np.allclose(got, ref, rtol=1e-2, atol=1e-2), a.path
        assert np.array_equal(got, tf.cast(tf.cast(ref, tf.bfloat16), tf.float32).numpy())
    for beam in (1, 3):
        a = [t.text for t in f32.translate(src, beam_size=beam)]
        b = [t.text for t in bf16.translate(src, beam_size=beam)]
        assert b == a == tgt  # a memorized set: rounding the weights changes no output
    # scores are log-probabilities in float32, close to the float32 model's
    s32 = [t.score for t in f32.translate(src, beam_size=3)]
    s16 = [t.score for t in bf16.translate(src, beam_size=3)]
    assert all(isinstance(s, float) for s in s16)
    assert np.allclose(s16, s32, atol=0.1)
    # the CLI takes it with --set, like every decode key
    code, out, err = run_cli("translate", run, src[0], "--set", BF16[0])
    assert code == 0, err
    assert out == tgt[0] + "\n"


def test_wider_padding_changes_nothing(memorized_run):
    """bfloat16 decoding rounds source widths up to a multiple of 8; masked padding
    must leave the search's output exactly as it is."""
    run, src = memorized_run["run_dir"], memorized_run["src"]
    t = Translator.load(run, overrides=BF16)
    ids = t.encode_sources(src[:6])
    width = max(len(x) for x in ids)
    search = t._search(3, 0.6, 3, True)
    outs = []
    for w in (width, width + 8, width + 13):
        batch = np.zeros((len(ids), w), np.int32)
        for row, x in enumerate(ids):
            batch[row, :len(x)] = x
        outs.append({k: v.numpy() for k, v in search(tf.constant(batch)).items()})
    for other in outs[1:]:
        for key in ("tokens", "scores"):
            first, got = outs[0][key], other[key]
            assert np.array_equal(first, got), key
        attn = other["attention"]
        assert np.all(attn[..., width:] == 0)  # no weight on the padding
        assert np.array_equal(attn[..., :width], outs[0]["attention"][..., :width])


def test_ensemble_members_and_explicit_dtype(memorized_run):
    run = memorized_run["run_dir"]
    ens = Translator.load([run, run], overrides=BF16)
    assert [_dtypes(m) for m in ens.models] == [{"bfloat16"}, {"bfloat16"}]
    # an explicit dtype wins over the config (export builds its graphs in float32)
    t = Translator.load(run, overrides=BF16, dtype="float32")
    assert _dtypes(t.model) == {"float32"} and t.decode.dtype == "float32"
    t = Translator.load(run, dtype="bfloat16")
    assert _dtypes(t.model) == {"bfloat16"} and t.decode.dtype == "bfloat16"


@pytest.mark.parametrize("value", ["float16", "bf16", "int8"])
def test_other_dtypes_are_refused_in_one_line(value, memorized_run, run_cli):
    code, out, err = run_cli("translate", memorized_run["run_dir"], memorized_run["src"][0],
                             "--set", f"decode.dtype={value}")
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "decode.dtype" in err and "bfloat16" in err, err


@pytest.mark.parametrize("native, onednn, fragment", [
    (False, None, "this CPU has no bfloat16 instructions"),
    (True, "0", "with TF_ENABLE_ONEDNN_OPTS=0"),
    (True, "1", None),
])
def test_slow_bfloat16_is_warned_about(native, onednn, fragment, memorized_run, monkeypatch,
                                       caplog):
    import translator.translator as module

    monkeypatch.setattr(module, "cpu_has_native_bfloat16", lambda: native)
    if onednn is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    with caplog.at_level("WARNING", logger="translator.translator"):
        Translator.load(memorized_run["run_dir"], overrides=BF16)
        Translator.load(memorized_run["run_dir"])  # float32: never warned about
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if fragment is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and fragment in warnings[0], warnings


def test_an_ensemble_is_warned_about_once(memorized_run, monkeypatch, caplog):
    import translator.translator as module

    monkeypatch.setattr(module, "cpu_has_native_bfloat16", lambda: False)
    run = memorized_run["run_dir"]
    with caplog.at_level("WARNING", logger="translator.translator"):
        Translator.load([run, run, run], overrides=BF16)
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1


def test_a_bfloat16_evaluation_keeps_its_own_record(memorized_run, run_cli, tmp_path):
    """evaluate in bfloat16 writes eval/<split>.bfloat16.{hyp,json}, never the float32
    record that serve reports; serve reports the record of its own dtype."""
    import json
    import shutil

    from translator.serving.app import saved_test_scores

    run = tmp_path / "run"
    shutil.copytree(memorized_run["run_dir"], run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    code, out, err = run_cli("evaluate", run, "--split", "dev")
    assert code == 0, err
    f32 = json.loads((run / "eval" / "dev.json").read_text(encoding="utf-8"))
    code, out, err = run_cli("evaluate", run, "--split", "dev", "--set", BF16[0])
    assert code == 0, err
    bf16 = json.loads(out)
    assert bf16["decode_dtype"] == "bfloat16" and f32["decode_dtype"] == "float32"
    assert bf16["json"] == str(run / "eval" / "dev.bfloat16.json")
    assert bf16["hypotheses"] == str(run / "eval" / "dev.bfloat16.hyp")
    assert json.loads((run / "eval" / "dev.json").read_text(encoding="utf-8")) == f32
    assert (run / "eval" / "dev.hyp").is_file() and (run / "eval" / "dev.bfloat16.hyp").is_file()
    # serve's test score: the newest record of the served dtype (no key: float32)
    (run / "eval" / "test.json").write_text(json.dumps(
        {"split": "test", "bleu": 30.0}) + "\n", encoding="utf-8")
    (run / "eval" / "test.bfloat16.json").write_text(json.dumps(
        {"split": "test", "bleu": 31.0, "decode_dtype": "bfloat16"}) + "\n", encoding="utf-8")
    assert saved_test_scores(run)["bleu"] == 30.0
    assert saved_test_scores(run, "bfloat16")["bleu"] == 31.0
    assert saved_test_scores(run, "bfloat16")["decode_dtype"] == "bfloat16"


def test_bucketed_sentence_counts_change_no_translation(memorized_run):
    """In bfloat16 a batch's sentence count is padded up to a bucket (1, 2, 4, 8, 16, ...)
    with EOS-only rows, and the search keeps its active sentences at bucket sizes: the
    translations, n-best lists and attention are those of the plain search."""
    from translator.translator import search_fn

    run, src, tgt = memorized_run["run_dir"], memorized_run["src"], memorized_run["tgt"]
    t = Translator.load(run, overrides=BF16)
    shapes = []
    original = t._search

    def spying(*args):
        search = original(*args)

        def call(batch):
            shapes.append(tuple(batch.shape))
            return search(batch)
        return call

    t._search = spying
    for beam, batch_size in ((1, 3), (3, 5), (3, 11), (3, 20)):
        shapes.clear()
        got = t.translate(src, beam_size=beam, n_best=min(beam, 2), batch_size=batch_size,
                          return_attention=True)
        assert [g.text for g in got] == tgt
        assert all(rows in (1, 2, 4, 8, 16, 24) and width % 8 == 0 for rows, width in shapes)
        assert sum(rows for rows, _ in shapes) > len(src) or batch_size == 20  # padded
        plain = tf.function(search_fn(t.models, t.decode, beam, 0.6, beam, True))
        ids = t.encode_sources(src)
        width = max(len(x) for x in ids)
        batch = np.zeros((len(ids), width), np.int32)
        for row, x in enumerate(ids):
            batch[row, :len(x)] = x
        out = {k: v.numpy() for k, v in plain(tf.constant(batch)).items()}
        for row, g in enumerate(got):
            assert g.score == pytest.approx(float(out["scores"][row, 0]), abs=2e-2)
            steps = len(g.n_best[0].pieces) + 1
            assert np.allclose(g.attention, out["attention"][row, 0, :steps, :len(ids[row])],
                               atol=2e-2)
