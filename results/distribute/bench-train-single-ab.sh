#!/bin/bash
# How results/distribute/bench-train-single-ab.jsonl was made (session 11, 2026-11-22): the same
# benchmark script (main's scripts/bench_train.py) on two versions of the package, in turn:
#   old: f068c11, the commit before the distributed work (a worktree at ../wt-old)
#   new: main (b26e46c for passes 1-2, fc19b70 for passes 3-5; the single-process path is the
#        same in both: later commits touched the distributed path and an error message)
# Each pass writes a header line, the translator package actually imported, then bench_train's lines.
# Passes 1-2 and 3-5 ran as two invocations (for pass in 1 2 / for pass in 3 4 5).
cd "$(dirname "$0")/../.."
out=results/distribute/bench-train-single-ab.jsonl
for pass in 1 2 3 4 5; do
  for side in old new; do
    if [ $side = old ]; then pkg=$PWD/../wt-old; commit=f068c11; else pkg=$PWD; commit=$(git rev-parse --short HEAD); fi
    echo "{\"pass\": $pass, \"package\": \"$side\", \"commit\": \"$commit\"}" >> $out
    (cd /tmp && PYTHONPATH=$pkg python -c 'import json, translator; print(json.dumps({"translator_file": translator.__file__}))') >> $out
    PYTHONPATH=$pkg python scripts/bench_train.py configs/spa-eng.yaml --data-root ../shared/data \
      --sentences 4000 >> $out
  done
done
