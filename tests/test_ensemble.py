"""Ensemble decoding on real tiny models: two runs trained on one prepared toy corpus with
different seeds (8 short epochs: imperfect models that disagree but end their sentences)."""

import json
import math

import numpy as np
import pytest
from conftest import toy_config, toy_pairs, write_aligned, write_config
from test_translate_cli import assert_one_line, copy_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Runs ``a`` (seed 1) and ``b`` (seed 2): same data, same tokenizer config."""
    from translator.cli import main

    root = tmp_path_factory.mktemp("ensemble")
    src, tgt = toy_pairs(120, seed=3)
    write_aligned(root / "data" / "toy", "train", src[:100], tgt[:100])
    write_aligned(root / "data" / "toy", "dev", src[100:], tgt[100:])
    runs = {}
    for name, seed in (("a", 1), ("b", 2)):
        cfg = toy_config(root / name, train={"epochs": 8, "seed": seed, "batch_tokens": 128})
        path = write_config(root / f"{name}.yaml", cfg)
        assert main(["-q", "train", str(path), "--data-root", str(root / "data")]) == 0
        runs[name] = root / name
    # sentences the models have not seen: where imperfect models disagree most
    unseen, _ = toy_pairs(60, seed=11)
    return {**runs, "root": root, "dev": src[100:], "unseen": [s for s in unseen if s not in src]}


def _hyp_ids(t, hyp):
    return [t.tokenizers.tgt.sp.piece_to_id(p) for p in hyp.pieces]


def _forced_end(t, src_ids, tgt_ids) -> bool:
    """Whether the search had to end the hypothesis at its length limit: that EOS costs
    nothing (the search allows only EOS there), so it is not in the score."""
    d = t.decode
    return len(tgt_ids) >= math.floor(d.max_ratio * len(src_ids)) + d.max_extra


def _teacher_forced_log_probs(model, src_ids, tgt_ids):
    """Per-step log-probabilities of ``tgt_ids`` + EOS under ``model``, teacher forced."""
    import tensorflow as tf

    from translator.tokenizer import BOS_ID, EOS_ID

    logits = model({"source_ids": tf.constant([src_ids], tf.int32),
                    "target_in": tf.constant([[BOS_ID, *tgt_ids]], tf.int32)}, training=False)
    logp = tf.nn.log_softmax(tf.cast(logits[0], tf.float32), axis=-1).numpy()
    return np.array([logp[i, tok] for i, tok in enumerate([*tgt_ids, EOS_ID])], np.float64)


def test_prepare_is_shared(two_runs):
    assert (two_runs["a"] / "spm.model").read_bytes() == (two_runs["b"] / "spm.model").read_bytes()


@pytest.mark.parametrize("beam", [1, 3])
def test_ensemble_of_a_model_with_itself_is_the_model(two_runs, beam):
    from translator import Translator

    run = two_runs["a"]
    single, double = Translator.load(run), Translator.load([run, run])
    assert double.ensemble_size == 2 and single.ensemble_size == 1
    texts = two_runs["dev"] + two_runs["unseen"]
    n_best = 2 if beam > 1 else 1
    one = single.translate(texts, beam_size=beam, length_penalty=0.6, n_best=n_best,
                           return_attention=True)
    two = double.translate(texts, beam_size=beam, length_penalty=0.6, n_best=n_best,
                           return_attention=True)
    for x, y in zip(one, two, strict=True):
        assert [(h.text, h.score, h.pieces) for h in x.n_best] == \
            [(h.text, h.score, h.pieces) for h in y.n_best]
        np.testing.assert_array_equal(x.attention, y.attention)


def test_two_models_ensemble_averages_log_probs(two_runs):
    """The ensemble differs from both members somewhere, and its beam score is the mean of
    the members' per-step log-probabilities (recomputed by teacher forcing) over the GNMT
    length penalty, as the search ranks."""
    import tensorflow as tf

    from translator import Translator
    from translator.decoding import length_penalty
    from translator.tokenizer import BOS_ID, EOS_ID

    a, b = Translator.load(two_runs["a"]), Translator.load(two_runs["b"])
    ens = Translator.load([two_runs["a"], two_runs["b"]])
    texts = two_runs["dev"] + two_runs["unseen"]
    alpha, beam = 0.6, 4
    out = {name: t.translate(texts, beam_size=beam, length_penalty=alpha)
           for name, t in (("a", a), ("b", b), ("ens", ens))}
    differs = [i for i in range(len(texts))
               if out["ens"][i].text not in (out["a"][i].text, out["b"][i].text)]
    assert differs, "the ensemble agrees with one member on every sentence"
    assert sum(out["a"][i].text != out["b"][i].text for i in range(len(texts))) > 0
    sources = ens.encode_sources(texts)
    renormalized_differs = forced = 0
    for i in range(len(texts)):
        hyp = out["ens"][i].n_best[0]
        ids = _hyp_ids(ens, hyp)
        steps = len(ids) + 1  # + EOS
        if _forced_end(ens, sources[i], ids):
            steps -= 1
            forced += 1
        members = [_teacher_forced_log_probs(t.model, sources[i], ids)[:steps] for t in (a, b)]
        lp = float(length_penalty(len(ids), alpha).numpy())
        assert hyp.score == pytest.approx(np.mean(members, axis=0).sum() / lp, abs=2e-4), texts[i]
        # what renormalizing the mean (log_softmax of it) would have scored instead
        per_model = [tf.nn.log_softmax(t.model({
            "source_ids": tf.constant([sources[i]], tf.int32),
            "target_in": tf.constant([[BOS_ID, *ids]], tf.int32)})[0]).numpy() for t in (a, b)]
        renorm = tf.nn.log_softmax(np.mean(per_model, axis=0)).numpy()
        alt = sum(renorm[s, tok] for s, tok in enumerate([*ids, EOS_ID][:steps])) / lp
        renormalized_differs += abs(alt - hyp.score) > 1e-3
    assert renormalized_differs > 0  # the check above tells the two apart
    assert forced < len(texts) // 2  # most hypotheses end with an EOS the models chose


def test_greedy_ensemble_score_is_the_sum_of_mean_log_probs(two_runs):
    from translator import Translator

    a, b = Translator.load(two_runs["a"]), Translator.load(two_runs["b"])
    ens = Translator.load([two_runs["a"], two_runs["b"]])
    texts = two_runs["unseen"][:10]
    sources = ens.encode_sources(texts)
    for i, r in enumerate(ens.translate(texts, beam_size=1)):
        ids = _hyp_ids(ens, r.n_best[0])
        mean = np.mean([_teacher_forced_log_probs(t.model, sources[i], ids) for t in (a, b)], 0)
        if _forced_end(ens, sources[i], ids):
            mean = mean[:-1]
        assert r.score == pytest.approx(mean.sum(), abs=2e-4)


def test_ensemble_n_best_and_attention(two_runs):
    from translator import Translator

    ens = Translator.load([two_runs["a"], two_runs["b"]])
    texts = two_runs["unseen"][:8]
    results = ens.translate(texts, beam_size=4, length_penalty=0.6, n_best=3,
                            return_attention=True)
    sources = ens.encode_sources(texts)
    for r, src in zip(results, sources, strict=True):
        assert 1 <= len(r.n_best) <= 3
        assert len({h.text for h in r.n_best}) == len(r.n_best)
        scores = [h.score for h in r.n_best]
        assert scores == sorted(scores, reverse=True) and r.text == r.n_best[0].text
        assert r.attention.shape == (len(r.n_best[0].pieces) + 1, len(src))
        np.testing.assert_allclose(r.attention.sum(axis=1), 1.0, atol=1e-4)
        assert r.source_pieces and len(r.source_pieces) == len(src)


def test_translate_and_evaluate_cli_with_ensemble(two_runs, run_cli, tmp_path):
    from translator import Translator

    a, b = two_runs["a"], two_runs["b"]
    texts = two_runs["unseen"][:5]
    src_file = tmp_path / "in.txt"
    src_file.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    code, out, err = run_cli("translate", a, "--input", src_file, "--beam-size", "3",
                             "--ensemble", b)
    assert code == 0, err
    expected = [r.text for r in Translator.load([a, b]).translate(texts, beam_size=3)]
    assert out.splitlines() == expected
    code, out, err = run_cli("translate", a, *texts[:2], "--beam-size", "3", "--ensemble", b)
    assert code == 0, err
    assert out.splitlines() == expected[:2]

    code, out, err = run_cli("evaluate", a, "--split", "dev")
    assert code == 0, err
    single = json.loads(out)
    assert single["json"] == str(a / "eval" / "dev.json")
    code, out, err = run_cli("evaluate", a, "--split", "dev", "--ensemble", b, "--beam-size", "3")
    assert code == 0, err
    record = json.loads(out)
    assert record["ensemble"] == [str(a), str(b)] and record["ensemble_size"] == 2
    assert record["hypotheses"] == str(a / "eval" / "dev.ensemble.hyp")
    assert json.loads((a / "eval" / "dev.ensemble.json").read_text(encoding="utf-8")) == record
    assert json.loads((a / "eval" / "dev.json").read_text(encoding="utf-8")) == single
    assert (a / "eval" / "dev.hyp").read_text(encoding="utf-8").splitlines() == [
        r.text for r in Translator.load(a).translate(two_runs["dev"])]
    assert (a / "eval" / "dev.ensemble.hyp").read_text(encoding="utf-8").splitlines() == [
        r.text for r in Translator.load([a, b]).translate(two_runs["dev"], beam_size=3)]


def test_serve_ignores_ensemble_records(two_runs, tmp_path):
    from translator.serving.app import saved_test_scores

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "test.json").write_text(json.dumps({"split": "test", "bleu": 10.0}) + "\n")
    (run / "eval" / "test.ensemble.json").write_text(
        json.dumps({"split": "test", "bleu": 20.0, "ensemble": ["x", "y"]}) + "\n")
    assert saved_test_scores(run)["bleu"] == 10.0


def test_mismatched_members_are_refused(two_runs, memorized_run, run_cli, tmp_path):
    from translator import Translator
    from translator.errors import UserError

    a = two_runs["a"]
    other = memorized_run["run_dir"]  # another corpus: another tokenizer
    assert (other / "spm.model").read_bytes() != (a / "spm.model").read_bytes()
    for command in ("translate", "evaluate"):
        extra = ["x"] if command == "translate" else ["--split", "dev"]
        code, _, err = run_cli(command, a, *extra, "--ensemble", other)
        assert_one_line(code, err, f"{other}: its tokenizer (spm.model) differs from that of {a}")
    flipped = copy_run(a, tmp_path / "flipped", "data", src_lang="yy", tgt_lang="xx")
    code, _, err = run_cli("translate", a, "x", "--ensemble", flipped)
    assert_one_line(code, err, "must translate the same language pair")
    code, _, err = run_cli("translate", a, "x", "--weights", "best.weights.h5",
                           "--ensemble", two_runs["b"])
    assert_one_line(code, err, "--weights cannot be combined with --ensemble")
    code, _, err = run_cli("translate", a, "--ensemble", two_runs["b"], "der hund")
    assert_one_line(code, err, "--ensemble der hund: not a run dir")
    with pytest.raises(UserError, match="one per run dir"):
        Translator.load([a, two_runs["b"]], weights=["best.weights.h5"])
    with pytest.raises(UserError, match="one weights entry per run dir"):
        Translator.load([a, two_runs["b"]], weights="best.weights.h5")
    # a list of one run dir is the single model, weights and all
    assert Translator.load([a], weights=["best.weights.h5"]).ensemble_size == 1


def test_search_fn_of_one_model_in_a_list_is_the_model(two_runs):
    """``Translator.load([run])`` takes the single model's path (no ensemble wrapper)."""
    from translator import Translator

    texts = two_runs["unseen"][:6]
    x = Translator.load(two_runs["a"]).translate(texts, beam_size=3)
    y = Translator.load([two_runs["a"]]).translate(texts, beam_size=3)
    assert [(r.text, r.score) for r in x] == [(r.text, r.score) for r in y]
    assert all(math.isfinite(r.score) for r in y)
