"""What subword sampling costs the input pipeline; prints one JSON line per alpha.

    python scripts/bench_sampling.py configs/multi30k-en-de.yaml --data-root ../shared/data \\
        --alpha 0 --alpha 0.1 --pairs 5000

For each ``tokenizer.sample_alpha`` the training dataset of the first ``--pairs`` prepared
training pairs is read for ``--epochs`` passes without a model: pairs/s and target tokens/s
of the pipeline alone (wall and process CPU time), how much longer sampled segmentations
are than the deterministic ones (the batches hold that many more tokens than
``train.batch_tokens``), and how many sampled sides fell back to their deterministic ids
for exceeding ``train.max_len``. The model's cost per epoch comes on top: compare
``tgt_tokens_per_sec`` of two ``translator train`` runs for that.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--data-root")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--alpha", type=float, action="append", default=[])
    p.add_argument("--nbest", type=int, default=-1)
    p.add_argument("--pairs", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()

    import numpy as np

    from translator.config import load_config
    from translator.corpus import Pairs, resolve_data_root
    from translator.pipeline import SubwordSampler, filter_by_length, make_dataset
    from translator.prepare import ensure_prepared, read_prepared_split
    from translator.tokenizer import PAD_ID, Tokenizers

    tmp = tempfile.mkdtemp(prefix="bench-sampling-")
    cfg = load_config(args.config, [f"run_dir={tmp}/run", *args.overrides])
    paths = ensure_prepared(cfg, resolve_data_root(args.data_root))
    toks = Tokenizers.load(paths.root)
    tc = cfg.train
    train = read_prepared_split(paths, "train")
    train = Pairs(train.src[: args.pairs], train.tgt[: args.pairs])
    kept, dropped, det_tokens, lengths = filter_by_length(train, toks, tc.max_len)
    for alpha in args.alpha or [0.0, 0.1]:
        sampler = (SubwordSampler(toks, alpha=alpha, nbest=args.nbest, max_len=tc.max_len)
                   if alpha > 0 else None)
        ds = make_dataset(kept, max_len=tc.max_len, batch_tokens=tc.batch_tokens, shuffle=True,
                          seed=tc.seed, shuffle_buffer=tc.shuffle_buffer, lengths=lengths,
                          sampler=sampler)
        tokens = padded = src_tokens = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.epochs):
            for inputs, target_out, weight in ds:
                tokens += float(np.sum(weight.numpy()))
                padded += int(np.prod(target_out.shape))
                src_tokens += int(np.sum(inputs["source_ids"].numpy() != PAD_ID))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        det_src = sum(len(x) + 1 for x in kept.src)
        print(json.dumps({
            "bench": "sampling", "config": args.config, "sample_alpha": alpha,
            "sample_nbest": args.nbest if alpha > 0 else None, "pairs": len(kept),
            "epochs": args.epochs, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "pairs_per_sec": round(len(kept) * args.epochs / wall, 1),
            "tgt_tokens_per_sec": round(tokens / wall, 1),
            "tgt_length_ratio": round(tokens / (det_tokens * args.epochs), 3),
            "src_length_ratio": round(src_tokens / (det_src * args.epochs), 3),
            "padding_share_target": round(1 - tokens / padded, 3),
            "fallbacks": sampler.take_fallbacks() if sampler else 0,
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
