"""Wall and process CPU seconds of Translator.translate on 640 shuffled spa-eng test
sentences in batches of BATCH (beam 5): the searches of commit caf96ed (old_decoding.py,
from `git show caf96ed:translator/decoding.py`) against the current ones, alternating,
2 repeats. Paths as on the development machine.

    python speed.py BATCH DIR_WITH_OLD_DECODING
"""
import importlib
import random
import sys
import time

import translator.decoding as new
import translator.translator as tt
from translator import Translator

sys.path.insert(0, sys.argv[2])
old = importlib.import_module("old_decoding")
lines = [line.rstrip("\n") for line in open("/work/shared/data/spa-eng/test.es")]
random.seed(1)
random.shuffle(lines)
lines = lines[:640]
tr = Translator.load("/work/main/runs/spa-eng-3ep")
bs = int(sys.argv[1])


def go(impl):
    tt.beam_search, tt.greedy_search = impl.beam_search, impl.greedy_search
    tr._searches.clear()
    tr.translate(lines[:bs], beam_size=5)  # trace
    w, c = time.perf_counter(), time.process_time()
    for i in range(0, len(lines), bs):
        tr.translate(lines[i:i + bs], beam_size=5)
    return time.perf_counter() - w, time.process_time() - c


res = {"old": [], "new": []}
for _ in range(2):
    for name, impl in (("old", old), ("new", new)):
        res[name].append([round(x, 2) for x in go(impl)])
print("batch", bs, res)
