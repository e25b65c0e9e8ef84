"""In-process: the stream's step time with 1-64 sentences in the pool (the 2nd-4th steps
after they join). Needs continuous-batching.patch applied (``Translator.stream``). Output:
step_cost_by_pool_size.out (reformatted for ruff after the run, same logic)."""

import os
import random
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

from translator import Translator  # noqa: E402

run = "/root/runs/spa-eng-bf16-3ep"
t = Translator.load(run)
lines = [line for line in open(run + "/corpus/test.src").read().splitlines() if line.strip()]
random.seed(0)
random.shuffle(lines)
s = t.stream(5, 1, False)
s.add(list(range(3)), lines[:3])
while s.size:
    s.step()
for n in (1, 2, 4, 8, 16, 32, 64):
    s.add(list(range(n)), lines[:n])
    s.step()  # first step
    times = []
    for _ in range(3):
        if not s.size:
            break
        a = time.perf_counter()
        s.step()
        times.append(time.perf_counter() - a)
    while s.size:
        s.step()
    print(n, "rows", 5 * n, "step ms", [round(1000 * x, 2) for x in times])
