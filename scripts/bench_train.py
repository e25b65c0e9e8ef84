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
of this machine's fp32 matmul peak, measured first in the same run (the best of several
2048 x 2048 ``tf.matmul``, as scripts/bench_translate.py does; ``--peak-gflops`` overrides).

With ``--workers N`` it compares, on the same prepared data (``--sentences`` pairs,
``data.max_pairs``), 2 epochs of ``translator train`` each, timed on epoch 2 (epoch 1
traces): 1 worker with N intra-op and N inter-op threads (plain Keras fit; TensorFlow's
default on an N-core machine), 1 worker with N intra-op threads and 1 inter-op thread,
1 worker with 1 thread of each, and N workers with 1 thread each
(MultiWorkerMirroredStrategy on 127.0.0.1, through scripts/launch_local_cluster.py).
``--repeats R`` runs the variants R times in turn (A B C D, A B C D, ...), so a machine
whose speed drifts affects each variant alike; every pass is printed, and the summary
takes each variant's median. It reports target tokens/s of each, the scaling
efficiency (N workers x 1 thread over 1 worker x N threads: the same cores), the time a
distributed step takes beyond a 1-thread step of the same local batch (communication and
waiting), and the bytes all-reduced per step.

    python scripts/bench_train.py configs/spa-eng.yaml --data-root ../shared/data \
        --workers 2 --sentences 10000 --repeats 3
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
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="the fp32 peak to compare with (default: measured now)")
    p.add_argument("--workers", type=int, default=None,
                   help="compare N worker processes x 1 thread with 1 worker x N threads")
    p.add_argument("--repeats", type=int, default=1,
                   help="with --workers: run the variants this many times, in turn")
    args = p.parse_args()
    if args.peak_gflops is None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_translate import matmul_peak_gflops

        args.peak_gflops = matmul_peak_gflops()
        print(json.dumps({"bench": "matmul", "size": 2048, "dtype": "float32",
                          "matmul_peak_gflops": round(args.peak_gflops, 1),
                          "cores": os.cpu_count()}), flush=True)
    if args.workers is not None:
        return bench_workers(args)

    from translator.config import load_config
    from translator.corpus import resolve_data_root
    from translator.pipeline import filter_by_length
    from translator.prepare import ensure_prepared, read_prepared_split
    from translator.tokenizer import Tokenizers
    from translator.training import precision_policy

    tmp = tempfile.mkdtemp(prefix="bench-train-")
    cfg = load_config(args.config, [f"run_dir={tmp}/run", *args.overrides])
    paths = ensure_prepared(cfg, resolve_data_root(args.data_root))
    toks = Tokenizers.load(paths.root)
    tc = cfg.train
    pairs = filter_by_length(read_prepared_split(paths, "train"), toks, tc.max_len).ids

    variants = [("default", True, False), ("tutorial", False, False)]
    if args.xla:
        variants.append(("default_xla", True, True))
    with precision_policy(tc.mixed_precision):
        for name, bucketing, xla in variants:
            _bench_variant(args, cfg, toks, pairs, name, bucketing, xla)
    return 0


def _bench_variant(args, cfg, toks, pairs, name: str, bucketing: bool, xla: bool) -> None:
    """Time one batching variant on ``pairs`` and print its JSON line."""
    import keras
    import numpy as np
    import tensorflow as tf

    from translator.model import build_model
    from translator.model.flops import forward_flops_per_target_token
    from translator.pipeline import make_dataset
    from translator.training import compile_model

    tc = cfg.train
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
        "bucketing": bucketing, "xla": xla, "mixed_precision": tc.mixed_precision,
        "batch_tokens": tc.batch_tokens if bucketing else None,
        "batch_sentences": None if bucketing else 64,
        "sentences": sentences, "batches": len(timed), "batch_shapes": len(one_per_shape),
        "warmup_batches": len(warm), "warmup_seconds": round(warmup_seconds, 2),
        "seconds": round(seconds, 2),
        "tgt_tokens_per_sec": round(tps, 1),
        "padding_share_target": round(1 - tgt_tokens / padded, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_flops_per_tgt_token": round(3 * fwd),
        "gflops_per_sec": round(3 * fwd * tps / 1e9, 2),
        "matmul_peak_gflops": round(args.peak_gflops, 1),
        "percent_of_peak": round(100 * 3 * fwd * tps / 1e9 / args.peak_gflops, 2),
        "parameters": model.count_params(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }), flush=True)


def _epoch2(run_dir: str) -> dict:
    lines = open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8").read().splitlines()
    first, second = (json.loads(x) for x in lines[:2])
    second["steps"] = second["optimizer_steps"] - first["optimizer_steps"]
    return second


def bench_workers(args) -> int:
    """1 worker x N threads vs 1 x 1 vs N workers x 1 thread, on the same prepared data."""
    import shutil
    import subprocess

    import numpy as np

    from translator.config import load_config
    from translator.corpus import resolve_data_root
    from translator.model import build_model
    from translator.prepare import ensure_prepared
    from translator.tokenizer import Tokenizers

    n = args.workers
    tmp = tempfile.mkdtemp(prefix="bench-workers-")
    sets = [*args.overrides, f"data.max_pairs={args.sentences}", "train.epochs=2",
            "train.dev_bleu_sentences=1", "train.patience=10"]
    root = resolve_data_root(args.data_root)
    cfg = load_config(args.config, [*sets, f"run_dir={tmp}/prepared"])
    paths = ensure_prepared(cfg, root)
    toks = Tokenizers.load(paths.root)
    model = build_model(cfg.model, toks.src.vocab_size, toks.tgt.vocab_size)
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    embeddings = int(sum(np.prod(v.shape) for v in model.trainable_weights
                         if "embedding" in v.path))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    here = os.path.dirname(os.path.abspath(__file__))
    variants = [(f"1x{n}", 1, n, n), (f"1x{n}-inter1", 1, n, 1), ("1x1", 1, 1, 1),
                (f"{n}x1", n, 1, 1)]
    passes: dict[str, list[dict]] = {name: [] for name, *_ in variants}
    for rep in range(args.repeats):
        for name, workers, intra, inter in variants:
            run = f"{tmp}/{name}-{rep}"
            shutil.copytree(paths.root, run)
            train_args = ["--data-root", str(root), "-q", "--json",
                          *[a for x in [*sets, f"run_dir={run}"] for a in ("--set", x)]]
            if workers == 1:
                cmd = [sys.executable, "-m", "translator", "train", args.config, *train_args,
                       "--set", "train.distribute=none"]
                proc_env = dict(env, TF_NUM_INTRAOP_THREADS=str(intra),
                                TF_NUM_INTEROP_THREADS=str(inter))
            else:
                cmd = [sys.executable, os.path.join(here, "launch_local_cluster.py"), args.config,
                       "--workers", str(workers), "--intra-op-threads", str(intra), "--",
                       *train_args]
                proc_env = env
            start = time.perf_counter()
            done = subprocess.run(cmd, env=proc_env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if done.returncode != 0:
                print(done.stdout[-4000:], file=sys.stderr)
                return done.returncode
            rec = _epoch2(run)
            rec["wall_seconds"] = round(time.perf_counter() - start, 1)
            rec["step_ms"] = 1000 * rec["train_seconds"] / max(1, rec["steps"])
            shutil.rmtree(run, ignore_errors=True)
            passes[name].append(rec)
            print(json.dumps({
                "bench": "train_workers", "variant": name, "repeat": rep, "config": args.config,
                "sentences": args.sentences, "intra_op_threads": intra,
                "inter_op_threads": inter, "workers": workers, "steps_epoch2": rec["steps"],
                "train_seconds_epoch2": rec["train_seconds"],
                "step_ms": round(rec["step_ms"], 1),
                "tgt_tokens_per_sec": rec["tgt_tokens_per_sec"],
                "wall_seconds": rec["wall_seconds"],
            }), flush=True)
    # each variant's median pass (by tokens/s); with 2 repeats, the slower one
    results = {k: sorted(v, key=lambda r: r["tgt_tokens_per_sec"])[(len(v) - 1) // 2]
               for k, v in passes.items()}
    base, one, dist = results[f"1x{n}"], results["1x1"], results[f"{n}x1"]
    def tokens_per_step(r: dict) -> float:
        return r["tgt_tokens_per_sec"] * r["step_ms"] / 1000

    global_tokens = tokens_per_step(dist)  # over all workers
    print(json.dumps({
        "bench": "train_workers_summary", "workers": n, "cores": os.cpu_count(),
        "repeats": args.repeats,
        "median_tgt_tokens_per_sec": {k: r["tgt_tokens_per_sec"] for k, r in results.items()},
        "range_tgt_tokens_per_sec": {k: [min(x["tgt_tokens_per_sec"] for x in v),
                                         max(x["tgt_tokens_per_sec"] for x in v)]
                                     for k, v in passes.items()},
        "inter1_over_default": round(results[f"1x{n}-inter1"]["tgt_tokens_per_sec"]
                                     / base["tgt_tokens_per_sec"], 3),
        "one_thread_over_default": round(one["tgt_tokens_per_sec"] / base["tgt_tokens_per_sec"],
                                         3),
        "matmul_peak_gflops": round(args.peak_gflops, 1),
        "scaling_efficiency": round(dist["tgt_tokens_per_sec"] / base["tgt_tokens_per_sec"], 3),
        "speedup_over_1x1": round(dist["tgt_tokens_per_sec"] / one["tgt_tokens_per_sec"], 3),
        "extra_ms_per_step_vs_1x1": round(dist["step_ms"] - one["step_ms"], 1),
        # the same, against a 1-thread step scaled to one worker's share of the global step
        # (a worker's batches need not carry as many tokens as the 1-thread run's)
        "extra_ms_per_step_vs_1x1_same_tokens": round(
            dist["step_ms"] - one["step_ms"] * (global_tokens / n) / max(1e-9, tokens_per_step(one)),
            1),
        "global_tgt_tokens_per_step": round(global_tokens, 1),
        "trainable_parameters": trainable,
        # one dense fp32 all-reduce of the gradients plus the token-count scalar; the
        # embedding gradients travel as IndexedSlices (all-gathered rows of the ids in the
        # batch), so their share depends on the batch
        "allreduce_bytes_per_step_dense": 4 * trainable + 4,
        "embedding_parameters_sparse": embeddings,
        "allreduce_bytes_per_step_non_embedding": 4 * (trainable - embeddings) + 4,
    }), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
