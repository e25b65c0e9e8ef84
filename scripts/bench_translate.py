"""Decoding speed benchmark; prints one JSON line per measurement.

    python scripts/bench_translate.py runs/spa-eng [--split test]
    python scripts/bench_translate.py runs/spa-eng --saved-model sm/greedy --saved-model sm/beam5

First this machine's fp32 matmul peak: the best of several 2048 x 2048 ``tf.matmul``
(``matmul_peak_gflops``). Every other line reports its share of that figure.

Without ``--saved-model``: the in-process ``Translator`` with greedy and beam 5 at batch
sizes 64 and 1 over the run's test split: sentences/s, target tokens/s, for batch 1 the
median one-sentence latency in ms, and the model's forward FLOPs per decoding step (one
target token of one hypothesis).

With ``--saved-model DIR`` (a ``translator export`` of RUN_DIR; repeatable): for each
SavedModel, at the beam size baked into it, the SavedModel and the in-process
``Translator`` with the same search over the whole split at batch 64 (the SavedModel gets
the sentences sorted by characters, in batches of 64: what a client without the tokenizer
can do; ``Translator`` sorts by subwords itself), then the single-sentence latency of both.
Each setting is warmed up first (tracing) and not timed then. The two engines alternate,
``--repeats`` timed passes each (default 3); each row is the fastest pass of its engine, and
``pass_seconds`` lists all passes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """The best of ``repeats`` ``n x n`` fp32 ``tf.matmul`` (after a warm-up), in GFLOP/s."""
    import tensorflow as tf

    a = tf.random.normal([n, n], seed=1)
    b = tf.random.normal([n, n], seed=2)
    tf.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--single-sentences", type=int, default=200,
                   help="sentences timed one by one for the batch-1 figures")
    p.add_argument("--repeats", type=int, default=3,
                   help="with --saved-model: timed passes of each engine, alternating; the "
                        "fastest of each is reported (default 3)")
    p.add_argument("--saved-model", action="append", default=[], metavar="DIR",
                   help="a `translator export` of RUN_DIR to time against Translator")
    args = p.parse_args()

    from translator.model.flops import decoder_step_flops
    from translator.prepare import RunPaths, read_prepared_split
    from translator.translator import Translator

    peak = matmul_peak_gflops()
    print(json.dumps({"bench": "matmul", "size": 2048, "dtype": "float32",
                      "matmul_peak_gflops": round(peak, 1), "cores": os.cpu_count()}), flush=True)
    t = Translator.load(args.run_dir)
    pairs = read_prepared_split(RunPaths(Path(args.run_dir)), args.split)
    src = pairs.src
    mean_src = sum(len(x) for x in t.encode_sources(src)) / len(src)
    flops = decoder_step_flops(t.model, t.tokenizers.tgt.vocab_size, mean_src)

    def row(engine, beam, batch, texts, seconds, tokens, latencies, **extra):
        # every hypothesis of the beam takes a step for every emitted token
        gflops = flops * tokens * beam / seconds / 1e9
        return {
            "bench": "translate", "engine": engine, "run_dir": args.run_dir, "split": args.split,
            "search": "greedy" if beam == 1 else f"beam{beam}", "batch_size": batch,
            "sentences": len(texts), "seconds": round(seconds, 2),
            "sentences_per_sec": round(len(texts) / seconds, 1),
            "tgt_tokens_per_sec": round(tokens / seconds, 1),
            "latency_ms_median": round(statistics.median(latencies), 1) if latencies else None,
            "step_flops_per_hypothesis": round(flops),
            "approx_gflops_per_sec": round(gflops, 2),
            "percent_of_matmul_peak": round(100 * gflops / peak, 2),
            "matmul_peak_gflops": round(peak, 1), "cores": os.cpu_count(), **extra,
        }

    def bench_translator(beam, alpha, batch, texts):
        t.translate(texts[:batch * 2], beam_size=beam, length_penalty=alpha,
                    batch_size=batch)  # warm-up
        latencies, out = [], []
        start = time.perf_counter()
        if batch == 1:
            for s in texts:
                t0 = time.perf_counter()
                out += t.translate([s], beam_size=beam, length_penalty=alpha, batch_size=1)
                latencies.append(1000 * (time.perf_counter() - t0))
        else:
            out = t.translate(texts, beam_size=beam, length_penalty=alpha, batch_size=batch)
        seconds = time.perf_counter() - start
        tokens = sum(len(r.n_best[0].pieces) + 1 for r in out if r.n_best)
        return row("translator", beam, batch, texts, seconds, tokens, latencies), [
            r.text for r in out]

    if not args.saved_model:
        for beam in (1, 5):
            for batch in (64, 1):
                texts = src if batch > 1 else src[: args.single_sentences]
                print(json.dumps(bench_translator(beam, None, batch, texts)[0]), flush=True)
        return 0

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the SentencePiece ops

    from translator.export import read_settings

    for saved in args.saved_model:
        settings = read_settings(saved)
        beam, alpha = settings["beam_size"], settings["length_penalty"]
        serve = tf.saved_model.load(saved).signatures["serving_default"]

        def bench_saved(batch, texts, serve=serve, beam=beam, saved=saved):
            order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if batch > 1 else list(
                range(len(texts)))
            batches = [[texts[i] for i in order[j:j + batch]] for j in range(0, len(order), batch)]
            for b in batches[:2]:  # warm-up
                serve(text=tf.constant(b))
            latencies, tokens, outputs = [], 0, []
            start = time.perf_counter()
            for b in batches:
                t0 = time.perf_counter()
                out = serve(text=tf.constant(b))
                tokens += int(tf.reduce_sum(out["target_length"]))  # subwords + EOS
                outputs.append(out["translation"])
                latencies.append(1000 * (time.perf_counter() - t0))
            seconds = time.perf_counter() - start
            got = [""] * len(texts)
            for i, x in zip(order, (x for o in outputs for x in o.numpy()), strict=True):
                got[i] = x.decode("utf-8")
            return row("saved_model", beam, batch, texts, seconds, tokens,
                       latencies if batch == 1 else [], saved_model=saved), got

        for batch in (64, 1):
            texts = src if batch > 1 else src[: args.single_sentences]
            # the two engines alternate, --repeats times each; the fastest pass of each counts
            # (on a shared machine a single pass of each measures the load as much as the engine)
            ours_all, theirs_all = [], []
            for _ in range(args.repeats):
                ours_all.append(bench_translator(beam, alpha, batch, texts))
                theirs_all.append(bench_saved(batch, texts))
            ours, our_texts = min(ours_all, key=lambda r: r[0]["seconds"])
            exported, their_texts = min(theirs_all, key=lambda r: r[0]["seconds"])
            ours["pass_seconds"] = [r[0]["seconds"] for r in ours_all]
            exported["pass_seconds"] = [r[0]["seconds"] for r in theirs_all]
            exported["speed_vs_translator"] = round(
                exported["sentences_per_sec"] / ours["sentences_per_sec"], 3)
            exported["same_translation_as_translator"] = sum(
                a == b for a, b in zip(our_texts, their_texts, strict=True))
            print(json.dumps(ours), flush=True)
            print(json.dumps(exported), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
