"""In-process: 640 shuffled spa-eng test sentences, static batches of 32 against a stream
that keeps 32 sentences in flight (each finished sentence is replaced at the next step).
Needs continuous-batching.patch applied (``Translator.stream``). Output: stream_vs_static.out
(run as ``python stream_vs_static.py 640``; reformatted for ruff after the run, same logic)."""

import os
import random
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

from translator import Translator  # noqa: E402

run = "/root/runs/spa-eng-bf16-3ep"
t = Translator.load(run)
lines = [line for line in open(run + "/corpus/test.src").read().splitlines() if line.strip()]
random.seed(0)
random.shuffle(lines)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 640
lines = lines[:N]
# warm up (traces both searches)
t.translate(lines[:32], beam_size=5, batch_size=32)
s = t.stream(5, 1, False)
s.add(list(range(3)), lines[:3])
while s.size:
    s.step()
s.add(list(range(30)), lines[:30])
while s.size:
    s.step()
# static: batches of 32 in arrival order
t0, c0 = time.perf_counter(), time.process_time()
for i in range(0, N, 32):
    t.translate(lines[i:i + 32], beam_size=5, batch_size=32)
print("static", N / (time.perf_counter() - t0), "sent/s", "cpu", time.process_time() - c0)
# streaming closed loop with 32 clients
t0, c0 = time.perf_counter(), time.process_time()
nxt = 32
s.add(list(range(32)), lines[:32])
done = steps = adds = 0
tadd = tstep = 0.0
while s.size:
    a = time.perf_counter()
    fin = s.step()
    tstep += time.perf_counter() - a
    steps += 1
    done += len(fin)
    k = min(len(fin), N - nxt)
    if k > 0:
        a = time.perf_counter()
        s.add(list(range(nxt, nxt + k)), lines[nxt:nxt + k])
        tadd += time.perf_counter() - a
        adds += 1
        nxt += k
el = time.perf_counter() - t0
print("stream", done / el, "sent/s", "cpu", time.process_time() - c0, "steps", steps,
      "step ms", 1000 * tstep / steps, "adds", adds, "add ms", 1000 * tadd / max(adds, 1))
