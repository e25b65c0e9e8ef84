"""In-process estimate of the serving speed-up with bfloat16 decoding: beam-5 ``translate``
calls of 32 shuffled dev sentences (a batched server's calls) against calls of 1 (a
``--max-batch 1`` server's), with the model built under POLICY (``float32`` or Keras'
``mixed_bfloat16``: float32 weights, bfloat16 compute). Run it once per setting of
TF_ENABLE_ONEDNN_OPTS; prints one JSON line with both speeds, their ratio and the dev
BLEU of the calls of 32.

Usage: TF_ENABLE_ONEDNN_OPTS=0|1 python bf16_onednn_ratio.py RUN_DIR POLICY
"""

import json
import os
import random
import sys
import time

import keras
import sacrebleu

run, policy = sys.argv[1:3]
if policy != "float32":
    keras.mixed_precision.set_global_policy(policy)  # before the model is built

from translator.translator import Translator  # noqa: E402


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


src, ref = read(f"{run}/corpus/dev.src"), read(f"{run}/corpus/dev.tgt")
order = list(range(len(src)))
random.Random(0).shuffle(order)
tr = Translator.load(run)
for i in range(0, 64, 32):  # warm up both shapes of call
    tr.translate([src[j] for j in order[i:i + 32]], beam_size=5, batch_size=32)
    tr.translate([src[order[i]]], beam_size=5, batch_size=1)

t0 = time.perf_counter()
for j in order[:200]:
    tr.translate([src[j]], beam_size=5, batch_size=1)
single = 200 / (time.perf_counter() - t0)

hyps = {}
t0 = time.perf_counter()
for i in range(0, len(order), 32):
    chunk = order[i:i + 32]
    for j, r in zip(chunk, tr.translate([src[j] for j in chunk], beam_size=5, batch_size=32),
                    strict=True):
        hyps[j] = r.text
batched = len(order) / (time.perf_counter() - t0)
bleu = sacrebleu.corpus_bleu([hyps[j] for j in range(len(src))], [ref]).score
print(json.dumps({"policy": policy, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                  "calls_of_1_sent_per_s": round(single, 1),
                  "calls_of_32_sent_per_s": round(batched, 1),
                  "ratio": round(batched / single, 2), "dev_bleu": round(bleu, 2)}), flush=True)
