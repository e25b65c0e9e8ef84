"""In-process estimate of the serving speed-up when the model decodes with bfloat16
weights (cast once, at load) instead of float32: beam-5 ``translate`` calls of 32 shuffled
dev sentences (a batched server's calls) against calls of 1 (a ``--max-batch 1``
server's). POLICY ``float32`` is today's model; ``bfloat16`` builds it under Keras'
``bfloat16`` policy (variables and compute in bfloat16; the orthogonal initializer, whose
QR has no bfloat16 kernel, runs in float32 and is cast: the values are overwritten by the
loaded weights anyway), then loads the float32 checkpoint into it. The searches score in
float32 either way (``decoding.to_log_probs`` casts the logits). Prints one JSON line with
both speeds, their ratio and the dev BLEU of the calls of 32.

Usage: TF_ENABLE_ONEDNN_OPTS=0|1 python bf16_weights_ratio.py RUN_DIR POLICY [N_SINGLE]
"""

import json
import os
import random
import sys
import time

import keras
import sacrebleu

run, policy = sys.argv[1:3]
n_single = int(sys.argv[3]) if len(sys.argv) > 3 else 200
if policy != "float32":
    keras.mixed_precision.set_global_policy(policy)  # before the model is built
    orth = keras.initializers.Orthogonal.__call__

    def orth_f32(self, shape, dtype=None):
        return keras.ops.cast(orth(self, shape, dtype="float32"), dtype or "float32")

    keras.initializers.Orthogonal.__call__ = orth_f32

from translator.translator import Translator  # noqa: E402


def read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


src, ref = read(f"{run}/corpus/dev.src"), read(f"{run}/corpus/dev.tgt")
order = list(range(len(src)))
random.Random(0).shuffle(order)
tr = Translator.load(run)
dtypes = sorted({w.dtype for w in tr.models[0].weights})
for i in range(0, 64, 32):  # warm up both shapes of call
    tr.translate([src[j] for j in order[i:i + 32]], beam_size=5, batch_size=32)
    tr.translate([src[order[i]]], beam_size=5, batch_size=1)

cpu0, t0 = time.process_time(), time.perf_counter()
for j in order[:n_single]:
    tr.translate([src[j]], beam_size=5, batch_size=1)
single, single_cpu = n_single / (time.perf_counter() - t0), time.process_time() - cpu0

hyps = {}
cpu0, t0 = time.process_time(), time.perf_counter()
for i in range(0, len(order), 32):
    chunk = order[i:i + 32]
    for j, r in zip(chunk, tr.translate([src[j] for j in chunk], beam_size=5, batch_size=32),
                    strict=True):
        hyps[j] = r.text
batched, batched_cpu = len(order) / (time.perf_counter() - t0), time.process_time() - cpu0
bleu = sacrebleu.corpus_bleu([hyps[j] for j in range(len(src))], [ref]).score
print(json.dumps({"policy": policy, "weights": [str(d) for d in dtypes],
                  "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                  "calls_of_1_sent_per_s": round(single, 1),
                  "calls_of_1_cpu_ms_per_sent": round(1000 * single_cpu / n_single, 1),
                  "calls_of_32_sent_per_s": round(batched, 1),
                  "calls_of_32_cpu_ms_per_sent": round(1000 * batched_cpu / len(order), 1),
                  "ratio": round(batched / single, 2), "dev_bleu": round(bleu, 2)}), flush=True)
