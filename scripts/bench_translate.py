"""Decoding speed benchmark; prints one JSON line per (search, batch size).

    python scripts/bench_translate.py runs/spa-eng [--split test]

For greedy and beam 5 at batch sizes 1 and 64 over the run's test split: sentences/s,
target tokens/s, and for batch 1 the median one-sentence latency in ms. Also the
model's forward FLOPs per decoding step (one target token of one hypothesis) and the
share of this CPU's fp32 peak (``--peak-gflops``; 2 cores AVX2+FMA ~ 157).
Each setting is warmed up first (tracing) and not timed then.
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--single-sentences", type=int, default=200,
                   help="sentences timed one by one for the batch-1 figures")
    p.add_argument("--peak-gflops", type=float, default=157.0)
    args = p.parse_args()

    from translator.model.flops import decoder_step_flops
    from translator.prepare import RunPaths, read_prepared_split
    from translator.translator import Translator

    t = Translator.load(args.run_dir)
    pairs = read_prepared_split(RunPaths(Path(args.run_dir)), args.split)
    src = pairs.src
    mean_src = sum(len(x) for x in t.encode_sources(src)) / len(src)
    for beam in (1, 5):
        for batch in (64, 1):
            texts = src if batch > 1 else src[: args.single_sentences]
            t.translate(texts[:batch * 2], beam_size=beam, batch_size=batch)  # warm-up
            latencies = []
            start = time.perf_counter()
            if batch == 1:
                out = []
                for s in texts:
                    t0 = time.perf_counter()
                    out += t.translate([s], beam_size=beam, batch_size=1)
                    latencies.append(1000 * (time.perf_counter() - t0))
            else:
                out = t.translate(texts, beam_size=beam, batch_size=batch)
            seconds = time.perf_counter() - start
            tokens = sum(len(r.n_best[0].pieces) + 1 for r in out if r.n_best)
            flops = decoder_step_flops(t.model, t.tokenizers.tgt.vocab_size, mean_src)
            # every hypothesis of the beam takes a step for every emitted token
            gflops = flops * tokens * beam / seconds / 1e9
            print(json.dumps({
                "bench": "translate", "run_dir": args.run_dir, "split": args.split,
                "search": "greedy" if beam == 1 else f"beam{beam}", "batch_size": batch,
                "sentences": len(texts), "seconds": round(seconds, 2),
                "sentences_per_sec": round(len(texts) / seconds, 1),
                "tgt_tokens_per_sec": round(tokens / seconds, 1),
                "latency_ms_median": round(statistics.median(latencies), 1) if latencies else None,
                "step_flops_per_hypothesis": round(flops),
                "approx_gflops_per_sec": round(gflops, 2),
                "percent_of_peak": round(100 * gflops / args.peak_gflops, 2),
                "cores": os.cpu_count(),
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
