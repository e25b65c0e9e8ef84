"""Decode a file with beam 5, 5-best and attention; dump texts, scores and an attention
digest per sentence as JSON, to compare two versions of the search.

Usage: PYTHONPATH=<checkout> python real_cmp.py RUN_DIR SOURCE_FILE OUT.json BATCH
"""
import hashlib
import json
import sys
import time

import numpy as np

from translator.translator import Translator

run, src, out, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(src, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f]
tr = Translator.load(run)
tr.translate(lines[:64], beam_size=5, n_best=5, batch_size=bs)  # trace
t0, c0 = time.perf_counter(), time.process_time()
res = tr.translate(lines, beam_size=5, n_best=5, batch_size=bs, return_attention=True)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
rows = [{"n": [[h.text, h.score] for h in r.n_best],
         "att": hashlib.sha1(np.ascontiguousarray(r.attention).tobytes()).hexdigest()}
        for r in res]
with open(out, "w") as f:
    json.dump({"wall": wall, "cpu": cpu, "rows": rows}, f)
print(json.dumps({"sentences": len(lines), "batch": bs, "wall_s": round(wall, 2),
                  "cpu_s": round(cpu, 2), "sent_per_s": round(len(lines) / wall, 1)}))
