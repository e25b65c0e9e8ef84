"""Decoding speed of an ensemble against its first member alone; prints one JSON line per
search (greedy and beam 5, batch 64) and engine (single, ensemble).

    python scripts/bench_ensemble.py runs/x --ensemble runs/x-seed2 [--sentences 200]

The sentences are the first ``--sentences`` of RUN_DIR's ``--split``. Each setting is
warmed up (tracing) on two batches first and not timed then; then it translates the
sentences ``--repeats`` times and reports the best. ``slowdown`` is the single model's
sentences/s over the ensemble's. The same run dir may be given twice (``--ensemble
RUN_DIR``): the cost is the same as two different members of that size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--ensemble", nargs="+", required=True, metavar="RUN_DIR2")
    p.add_argument("--split", default="test")
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from translator.prepare import RunPaths, read_prepared_split
    from translator.translator import Translator

    texts = read_prepared_split(RunPaths(Path(args.run_dir)), args.split).src[: args.sentences]
    engines = {"single": Translator.load(args.run_dir),
               "ensemble": Translator.load([args.run_dir, *args.ensemble])}
    for beam in (1, 5):
        speed = {}
        for name, t in engines.items():
            t.translate(texts[: 2 * args.batch_size], beam_size=beam,
                        batch_size=args.batch_size)  # warm-up: tracing
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = t.translate(texts, beam_size=beam, batch_size=args.batch_size)
                best = min(best, time.perf_counter() - start)
            speed[name] = len(texts) / best
            tokens = sum(len(r.n_best[0].pieces) + 1 for r in out if r.n_best)
            record = {
                "bench": "ensemble", "engine": name, "members": t.ensemble_size,
                "run_dirs": [args.run_dir, *args.ensemble][: t.ensemble_size],
                "search": "greedy" if beam == 1 else f"beam{beam}",
                "batch_size": args.batch_size, "sentences": len(texts),
                "seconds": round(best, 2), "sentences_per_sec": round(speed[name], 1),
                "tgt_tokens_per_sec": round(tokens / best, 1), "cores": os.cpu_count(),
            }
            if name == "ensemble":
                record["slowdown"] = round(speed["single"] / speed["ensemble"], 2)
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
