"""Decode spa-eng en->es with the model built under POLICY (float32 or mixed_bfloat16).

Usage: python bf16_decode.py RUN_DIR DATA_ROOT SPLIT POLICY; prints one JSON line.
"""
import json
import random
import sys
import time

import keras
import sacrebleu

run, data_root, split, policy = sys.argv[1:5]
if policy != "float32":
    keras.mixed_precision.set_global_policy(policy)  # before the model is built

from translator.translator import Translator  # noqa: E402


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


src = read(f"{data_root}/spa-eng/{split}.en")
ref = read(f"{data_root}/spa-eng/{split}.es")
tr = Translator.load(run)
tr.translate(src[:64], beam_size=5, batch_size=64)
t0 = time.perf_counter()
hyps = [r.text for r in tr.translate(src, beam_size=5, batch_size=64)]
whole = time.perf_counter() - t0
bleu = sacrebleu.corpus_bleu(hyps, [ref]).score
lines = src[:]
random.Random(0).shuffle(lines)
lines = lines[:960]
for i in range(0, 64, 32):
    tr.translate(lines[i:i + 32], beam_size=5, batch_size=32)
t0 = time.perf_counter()
for i in range(0, len(lines), 32):
    tr.translate(lines[i:i + 32], beam_size=5, batch_size=32)
b32 = len(lines) / (time.perf_counter() - t0)
print(json.dumps({"policy": policy, "split": split, "bleu": round(bleu, 2),
                  "whole_split_sent_per_s": round(len(src) / whole, 1),
                  "calls_of_32_sent_per_s": round(b32, 1)}))
