"""Training throughput benchmark; prints one JSON line per variant.

    python scripts/bench_train.py configs/spa-eng.yaml --data-root ../shared/data

Variants, on the same model and the same shuffled training sentences:
  - ``default``: token-based batches with length bucketing (``train.batch_tokens``),
  - ``tutorial``: fixed batches of 64 sentences padded to the longest one, no XLA
    (how the TensorFlow "NMT with attention" tutorial feeds its model),
  - ``default_xla`` (with ``--xla``): the default pipeline compiled with XLA.
Each variant first runs ``--warmup`` batches (tracing; with XLA also one batch of
every shape in the timed set, since XLA compiles once per shape, and the compile time
is reported as ``warmup_seconds``), then is timed over ``--sentences`` sentences.
Reported: target tokens/s (real tokens, no padding),
peak RSS, analytic model FLOPs per target token (training = 3x forward) and the share
of this CPU's fp32 peak (``--peak-gflops``; 2 cores AVX2+FMA ~ 157).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--data-root")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--sentences", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--xla", action="store_true", help="also time the default pipeline with XLA")
    p.add_argument("--peak-gflops", type=float, default=157.0)
    args = p.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from translator.config import load_config
    from translator.corpus import resolve_data_root
    from translator.model import build_model
    from translator.model.flops import forward_flops_per_target_token
    from translator.pipeline import filter_by_length, make_dataset
    from translator.prepare import ensure_prepared, read_prepared_split
    from translator.tokenizer import Tokenizers
    from translator.training import compile_model

    tmp = tempfile.mkdtemp(prefix="bench-train-")
    cfg = load_config(args.config, [f"run_dir={tmp}/run", *args.overrides])
    paths = ensure_prepared(cfg, resolve_data_root(args.data_root))
    toks = Tokenizers.load(paths.root)
    tc = cfg.train
    pairs = filter_by_length(read_prepared_split(paths, "train"), toks, tc.max_len).ids

    variants = [("default", True, False), ("tutorial", False, False)]
    if args.xla:
        variants.append(("default_xla", True, True))
    for name, bucketing, xla in variants:
        keras.utils.set_random_seed(tc.seed)
        ds = make_dataset(pairs, max_len=tc.max_len, batch_tokens=tc.batch_tokens,
                          shuffle=True, seed=tc.seed, shuffle_buffer=tc.shuffle_buffer,
                          bucketing=bucketing, fixed_batch_size=64, pad_to_bucket_boundary=xla)
        batches, sentences = [], 0
        for batch in ds:
            batches.append(batch)
            if len(batches) > args.warmup:
                sentences += int(batch[1].shape[0])
            if sentences >= args.sentences:
                break
        warm, timed = batches[: args.warmup], batches[args.warmup:]
        one_per_shape = {tuple(b[1].shape): b for b in timed}
        if xla:  # XLA compiles once per batch shape: compile every timed shape first
            warm = warm + list(one_per_shape.values())
        tgt_tokens = float(sum(np.sum(b[2].numpy()) for b in timed))
        src_tokens = float(sum(np.sum(b[0]["source_ids"].numpy() != 0) for b in timed))
        padded = float(sum(np.prod(b[1].shape) for b in timed))
        model = build_model(cfg.model, toks.src.vocab_size, toks.tgt.vocab_size)
        compile_model(model, dataclasses.replace(tc, jit_compile=xla))

        def feed(items, spec=ds.element_spec):
            return tf.data.Dataset.from_generator(lambda: iter(items), output_signature=spec)

        start = time.perf_counter()
        model.fit(feed(warm), epochs=1, verbose=0)
        warmup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        model.fit(feed(timed), epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        fwd = forward_flops_per_target_token(cfg.model, toks.tgt.vocab_size,
                                             src_tokens / sentences, tgt_tokens / sentences)
        tps = tgt_tokens / seconds
        print(json.dumps({
            "bench": "train", "variant": name, "config": args.config,
            "bucketing": bucketing, "xla": xla, "batch_tokens": tc.batch_tokens if bucketing else None,
            "batch_sentences": None if bucketing else 64,
            "sentences": sentences, "batches": len(timed), "batch_shapes": len(one_per_shape),
            "warmup_batches": len(warm), "warmup_seconds": round(warmup_seconds, 2),
            "seconds": round(seconds, 2),
            "tgt_tokens_per_sec": round(tps, 1),
            "padding_share_target": round(1 - tgt_tokens / padded, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "train_flops_per_tgt_token": round(3 * fwd),
            "gflops_per_sec": round(3 * fwd * tps / 1e9, 2),
            "percent_of_peak": round(100 * 3 * fwd * tps / 1e9 / args.peak_gflops, 2),
            "parameters": model.count_params(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
