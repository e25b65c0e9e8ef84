"""Per-step CPU cost of the decoder step's parts at a server batch (160 rows) and a single
sentence's beam (5 rows); process CPU time, one intra-op thread (runs beside a training)."""
import json
import os

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
import resource
import time

import tensorflow as tf

from translator.config import load_config
from translator.decoding import NEG_INF, length_penalty
from translator.model import build_model

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

cfg = load_config("configs/spa-eng.yaml")
model = build_model(cfg.model, 8000, 8000, dtype="bfloat16")
S = 14  # source length
K = 5  # beam
EOS = 2

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def bench(name, fn, *args, n=60):
    for _ in range(5):
        out = fn(*args)
    tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
    c0, w0 = cpu(), time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
    print(json.dumps({"part": name, "cpu_ms": round((cpu() - c0) / n * 1e3, 3),
                      "wall_ms": round((time.perf_counter() - w0) / n * 1e3, 3)}), flush=True)

for sents in (32, 1):
    rows = sents * K
    src = tf.random.uniform([sents, S], 3, 8000, tf.int32)
    state = model.encode(src)
    state = tf.nest.map_structure(lambda x: tf.repeat(x, K, axis=0), state)
    tokens = tf.random.uniform([rows], 3, 8000, tf.int32)
    step = tf.function(lambda t, s: model.step(t, s))
    print(f"# sentences {sents}, rows {rows}")
    bench(f"step[{rows}]", step, tokens, state)
    feed = tf.cast(tf.random.normal([rows, 512]), tf.bfloat16)
    proj = tf.function(lambda f: model.decoder.project(f))
    bench(f"project[{rows}]", proj, feed)
    logits = proj(feed)
    lsm = tf.function(lambda x: tf.nn.log_softmax(tf.cast(x, tf.float32)))
    bench(f"log_softmax[{rows}]", lsm, logits)
    @tf.function
    def score(logits, log_probs, finished, lengths, beam_max, t):
        active = tf.shape(log_probs)[0]
        logp = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [active, K, -1])
        vocab = tf.shape(logp)[2]
        eos_only = tf.where(tf.range(vocab) == EOS, 0.0, NEG_INF)
        force = tf.logical_or(finished, t >= beam_max)
        logp = tf.where(force[:, :, tf.newaxis], eos_only[tf.newaxis, tf.newaxis], logp)
        total = log_probs[:, :, tf.newaxis] + logp
        grows = tf.logical_and(tf.logical_not(finished)[:, :, tf.newaxis],
                               tf.not_equal(tf.range(vocab), EOS)[tf.newaxis, tf.newaxis])
        inv_lp = tf.where(grows, 1.0 / length_penalty(lengths + 1, 0.6)[:, :, tf.newaxis],
                          1.0 / length_penalty(lengths, 0.6)[:, :, tf.newaxis])
        _, top_idx = tf.math.top_k(tf.reshape(total * inv_lp, [active, -1]), k=K)
        return top_idx, tf.gather(tf.reshape(total, [active, -1]), top_idx, batch_dims=1)
    lp = tf.random.normal([sents, K]) - 5
    fin = tf.zeros([sents, K], tf.bool)
    ln = tf.fill([sents, K], 4)
    bm = tf.fill([sents, K], 30)
    bench(f"score_incl_log_softmax[{rows}]", score, logits, lp, fin, ln, bm, tf.constant(5))
    @tf.function
    def topk(x):
        x = tf.cast(x, tf.float32)
        return tf.math.top_k(tf.reshape(x, [-1, K * tf.shape(x)[1]]), k=K)
    bench(f"top_k[{rows}]", topk, logits)
