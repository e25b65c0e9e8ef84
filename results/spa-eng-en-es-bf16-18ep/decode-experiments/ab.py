"""Beam-5 speed in calls of 32 and 64 shuffled sentences (a server's batches).

Usage: PYTHONPATH=<checkout> python ab.py RUN_DIR SOURCE_FILE; prints one JSON line.
"""
import json
import random
import sys
import time

import translator.decoding as decoding
from translator.translator import Translator

run, src = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f]
random.Random(0).shuffle(lines)
lines = lines[:960]
tr = Translator.load(run)
for bs in (32, 64):  # trace
    for i in range(0, 128, bs):
        tr.translate(lines[i:i + bs], beam_size=5, batch_size=bs)
out = {"code": decoding.__file__}
for rep in range(2):
    for bs in (32, 64):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(lines), bs):
            tr.translate(lines[i:i + bs], beam_size=5, batch_size=bs)
        out[f"b{bs}_r{rep}_sent_per_s"] = round(len(lines) / (time.perf_counter() - t0), 1)
        out[f"b{bs}_r{rep}_cpu_s"] = round(time.process_time() - c0, 1)
print(json.dumps(out))
