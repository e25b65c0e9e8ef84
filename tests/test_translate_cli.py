"""translate / evaluate on the tiny memorized run: what the README promises about them."""

import shutil

import pytest
import yaml


def copy_run(run, dest, section="decode", **values):
    """The files translate/evaluate read, copied so that the config can be edited:
    ``values`` update the config's ``section``."""
    (dest / "checkpoints").mkdir(parents=True)
    for name in ("spm.model", "checkpoints/best.weights.h5"):
        shutil.copy(run / name, dest / name)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    cfg[section].update(values)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return dest


def assert_one_line(code, err, fragment):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("translator: error: ") and fragment in err, err


def _other_models_weights(path, vocab):
    from translator.config import ModelConfig
    from translator.model import build_model

    build_model(ModelConfig(embed_dim=32, hidden_size=64), vocab + 7, vocab + 7).save_weights(path)


@pytest.mark.parametrize("kind", ["not_keras", "garbage_h5", "truncated_h5", "truncated_keras",
                                  "other_model", "zip_named_keras", "extra_encoder_layer"])
def test_unloadable_weights_give_one_line(kind, memorized_run, run_cli, tmp_path):
    run = memorized_run["run_dir"]
    best = (run / "checkpoints" / "best.weights.h5").read_bytes()
    if kind == "not_keras":
        path = tmp_path / "notes.txt"
        path.write_text("hello\n")
    elif kind == "garbage_h5":
        path = tmp_path / "x.weights.h5"
        path.write_bytes(b"not hdf5 at all\n" * 10)
    elif kind == "truncated_h5":
        path = tmp_path / "cut.weights.h5"
        path.write_bytes(best[: len(best) // 3])
    elif kind == "truncated_keras":
        keras_file = sorted((run / "checkpoints").glob("epoch-*.keras"))[-1].read_bytes()
        path = tmp_path / "cut.keras"
        path.write_bytes(keras_file[: len(keras_file) // 3])
    elif kind == "zip_named_keras":  # a zip, but not a Keras archive
        import zipfile

        path = tmp_path / "zip.keras"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", "{}")
    elif kind == "extra_encoder_layer":  # the same model with one more encoder layer
        import dataclasses

        from translator.config import load_config
        from translator.model import build_model
        from translator.tokenizer import Tokenizers

        path = tmp_path / "enc2.weights.h5"
        vocab = Tokenizers.load(run).src.vocab_size
        model_cfg = load_config(run / "config.yaml").model
        build_model(dataclasses.replace(model_cfg, encoder_layers=2), vocab, vocab).save_weights(path)
    else:
        from translator.tokenizer import Tokenizers

        path = tmp_path / "other.weights.h5"
        _other_models_weights(path, Tokenizers.load(run).src.vocab_size)
    for argv in (["translate", run, memorized_run["src"][0]], ["evaluate", run, "--split", "dev"]):
        code, out, err = run_cli(*argv, "--weights", path)
        assert_one_line(code, err, f"{path}: cannot load these weights")
        assert out == ""


@pytest.mark.parametrize("value, fragment", [
    (float("inf"), "decode.max_ratio=inf is not a finite number"),
    (1e12, "decode.max_ratio=1000000000000.0 is out of range"),  # overflowed the int32 limit
])
def test_decode_limit_that_breaks_the_search_is_refused(value, fragment, memorized_run, run_cli,
                                                        tmp_path):
    run = copy_run(memorized_run["run_dir"], tmp_path / "run", max_ratio=value)
    code, out, err = run_cli("translate", run, memorized_run["src"][0])
    assert_one_line(code, err, fragment)
    assert str(run / "config.yaml") in err


def test_set_decode_keys_on_translate_and_evaluate(memorized_run, run_cli, tmp_path):
    import json

    run, src, tgt = memorized_run["run_dir"], memorized_run["src"], memorized_run["tgt"]
    long = max(range(len(src)), key=lambda i: len(tgt[i].split()))
    assert len(tgt[long].split()) >= 3
    code, out, err = run_cli("translate", run, src[long])
    assert code == 0 and out == tgt[long] + "\n"
    # the output limit max_ratio * source_length + max_extra, set without editing config.yaml
    code, out, err = run_cli("translate", run, src[long], "--set", "decode.max_ratio=0",
                             "--set", "decode.max_extra=1")
    assert code == 0, err
    assert len(out.split()) == 1 and tgt[long].startswith(out.strip())
    (tmp_path / "s.txt").write_text(src[long] + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text(tgt[long] + "\n", encoding="utf-8")
    code, out, err = run_cli("evaluate", run, "--src", tmp_path / "s.txt", "--ref",
                             tmp_path / "r.txt", "--output", tmp_path / "h.txt",
                             "--set", "decode.beam_size=2", "--set", "decode.max_ratio=0",
                             "--set", "decode.max_extra=1")
    assert code == 0, err
    result = json.loads(out)
    assert result["beam_size"] == 2 and result["bleu"] < 100
    assert len((tmp_path / "h.txt").read_text(encoding="utf-8").split()) == 1
    # the run's config.yaml is not changed
    assert "max_extra: 10" in (run / "config.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("override, fragment", [
    ("model.hidden_size=8", "model.hidden_size is fixed by the trained run; translate and "
                            "evaluate take only decode.KEY=VALUE"),
    ("run_dir=elsewhere", "run_dir is fixed by the trained run"),
    ("decode.beam_width=3", "unknown key decode.beam_width; valid keys of decode"),
    ("decode.beam_size=0", "decode.beam_size=0 is out of range"),
    ("decode.max_ratio=inf", "decode.max_ratio=inf is not a finite number"),
])
def test_set_refuses_what_translate_cannot_change(command, override, fragment, memorized_run,
                                                  run_cli):
    argv = [command, memorized_run["run_dir"], "--set", override]
    if command == "translate":
        argv.insert(2, memorized_run["src"][0])
    else:
        argv += ["--split", "dev"]
    code, out, err = run_cli(*argv)
    assert_one_line(code, err, fragment)
    assert out == ""


def test_input_with_no_subwords_is_empty_in_empty_out(memorized_run, run_cli, monkeypatch):
    import io
    import sys

    from translator import Translator

    run, src, tgt = memorized_run["run_dir"], memorized_run["src"], memorized_run["tgt"]
    invisible = ["\u200b", " \u2060\ufeff ", "\u200b\u200b", "\u200e"]
    results = Translator.load(run).translate([invisible[0], src[0], *invisible[1:]],
                                             beam_size=2)
    assert [r.text for r in results] == ["", tgt[0], "", "", ""]
    assert [r.score for r in results[2:]] == [0.0, 0.0, 0.0] and results[0].score == 0.0
    lines = [src[1], *invisible, src[2]]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(
        ("\n".join(lines) + "\n").encode())))
    code, out, err = run_cli("translate", run)
    assert code == 0, err
    assert out.split("\n") == [tgt[1], "", "", "", "", tgt[2], ""]


def test_n_best_is_deduplicated_by_text(memorized_run):
    """Two segmentations of one string are one hypothesis, with the better score."""
    import numpy as np

    from translator import Translator

    t = Translator.load(memorized_run["run_dir"])
    sp = t.tokenizers.tgt.sp
    whole = sp.encode("the dog", out_type=int)
    pieces = [sp.id_to_piece(i) for i in whole]
    assert pieces == ["▁the", "▁dog"]
    spelled = [sp.piece_to_id(p) for p in ["▁the", "▁", "d", "o", "g"]]
    assert sp.unk_id() not in spelled and sp.decode(spelled) == "the dog"
    other = sp.encode("the cat", out_type=int)
    hyps = [whole, spelled, other]  # best first, as the search returns them
    tokens = np.zeros((1, 3, 5), np.int32)
    for n, h in enumerate(hyps):
        tokens[0, n, : len(h)] = h
    out = {"tokens": tokens, "lengths": np.array([[len(h) for h in hyps]]),
           "scores": np.array([[-0.1, -0.5, -0.9]], np.float32)}
    result = t._make(out, 0, [4, 3], 2, False)
    assert [h.text for h in result.n_best] == ["the dog", "the cat"]
    assert [round(h.score, 4) for h in result.n_best] == [-0.1, -0.9]
    assert result.n_best[0].pieces == pieces and result.text == "the dog"
    assert [h.text for h in t._make(out, 0, [4, 3], 3, False).n_best] == ["the dog", "the cat"]


def test_n_best_default_comes_from_the_run_config(memorized_run, run_cli, tmp_path):
    import json

    run = copy_run(memorized_run["run_dir"], tmp_path / "run", beam_size=3, n_best=2)
    src, tgt = memorized_run["src"][:4], memorized_run["tgt"][:4]
    code, out, err = run_cli("translate", run, *src)
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert len(lines) == 4 and all(len(hyps) == 2 and hyps[0] != hyps[1] for hyps in lines)
    assert [hyps[0] for hyps in lines] == tgt
    code, out, err = run_cli("translate", run, *src, "--n-best", "1")
    assert code == 0 and out.splitlines() == tgt
    # greedy has one hypothesis: the config's n_best is capped at a smaller --beam-size ...
    code, out, err = run_cli("translate", run, *src, "--beam-size", "1")
    assert code == 0 and out.splitlines() == tgt
    # ... but an --n-best larger than the beam is an error
    code, out, err = run_cli("translate", run, src[0], "--beam-size", "2", "--n-best", "3")
    assert_one_line(code, err, "--n-best 3 is larger than the beam size 2")
    # evaluate: BLEU on the best hypothesis, the n-best list in <hyp>.nbest
    (tmp_path / "s.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    code, out, err = run_cli("evaluate", run, "--src", tmp_path / "s.txt", "--ref",
                             tmp_path / "r.txt")
    assert code == 0, err
    result = json.loads(out)
    assert result["bleu"] == 100.0 and result["n_best"] == 2 and result["beam_size"] == 3
    assert result["hypotheses"] == str(run / "eval" / "s.txt.hyp")
    assert result["nbest"] == str(run / "eval" / "s.txt.nbest")
    assert (run / "eval" / "s.txt.hyp").read_text(encoding="utf-8").splitlines() == tgt
    nbest = [x.split("\t") for x in (run / "eval" / "s.txt.nbest").read_text("utf-8").splitlines()]
    assert nbest == lines
    # n_best 1 (the default): no .nbest file
    code, out, err = run_cli("evaluate", run, "--src", tmp_path / "s.txt", "--ref",
                             tmp_path / "r.txt", "--set", "decode.n_best=1", "--output",
                             tmp_path / "one.hyp")
    assert code == 0 and "nbest" not in json.loads(out)
    assert not (tmp_path / "one.nbest").exists()


def test_inputs_longer_than_train_max_len_are_reported(memorized_run, run_cli, tmp_path):
    import json

    from translator import Translator

    run, src, tgt = memorized_run["run_dir"], memorized_run["src"], memorized_run["tgt"]
    t = Translator.load(run)
    assert t.max_len == 20  # the toy config's train.max_len
    encode = t.tokenizers.src.encode
    word = next(w for w in " ".join(src).split() if len(encode([w])[0]) == 1)
    at_limit, over = " ".join([word] * 20), " ".join([word] * 21)
    assert [len(ids) for ids in encode([at_limit, over])] == [20, 21]  # subwords
    results = t.translate([at_limit, over, src[0], ""])
    assert [r.source_too_long for r in results] == [False, True, False, False]
    long = " ".join(src[:8])  # 8 sentences, about 30 subwords
    code, out, err = run_cli("translate", run, long, src[0], src[1])
    assert code == 0, err
    assert len(out.splitlines()) == 3 and out.splitlines()[1:] == tgt[:2]
    assert err.splitlines() == [
        "translator: warning: 1 of 3 inputs is longer than train.max_len=20 subwords, the "
        "longest the model was trained on; its translation may be cut short: split it into "
        "sentences"]
    code, out, err = run_cli("translate", run, src[0], src[1])
    assert code == 0 and err == ""
    (tmp_path / "s.txt").write_text("\n".join([long, over, src[0]]) + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("\n".join(["x", "y", tgt[0]]) + "\n", encoding="utf-8")
    code, out, err = run_cli("evaluate", run, "--src", tmp_path / "s.txt", "--ref",
                             tmp_path / "r.txt", "--output", tmp_path / "h.txt")
    assert code == 0, err
    assert json.loads(out)["sources_over_max_len"] == 2
    assert [line for line in err.splitlines() if "warning" in line] == [
        "translator: warning: 2 of 3 sentences are longer than train.max_len=20 subwords, the "
        "longest the model was trained on; their translations may be cut short: split them "
        "into sentences"]
