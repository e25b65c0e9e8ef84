"""CPU time of a beam step's scoring (bf16 logits in, top-k out) at 160 and 5 rows: variants.

Run at nice 19 beside a training (session 21): read cpu_ms, one intra-op thread; "same" compares
each variant's indices and values with the current scoring's."""
import json
import os
import resource
import sys

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
import numpy as np
import tensorflow as tf

from translator.decoding import NEG_INF, length_penalty

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
K, V, EOS = 5, 8000, 2

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def bench(name, fn, *args, n=100):
    for _ in range(5):
        out = fn(*args)
    [o.numpy() for o in tf.nest.flatten(out)]
    c0 = cpu()
    for _ in range(n):
        out = fn(*args)
    [o.numpy() for o in tf.nest.flatten(out)]
    print(json.dumps({"part": name, "cpu_ms": round((cpu() - c0) / n * 1e3, 3)}), flush=True)
    return out

def top_k_last(x, k, chunk=64):
    n = x.shape[-1]
    lead = tf.shape(x)[:-1]
    pad = -n % chunk
    x = tf.reshape(x, [-1, n])
    if pad:
        x = tf.concat([x, tf.fill([tf.shape(x)[0], pad], tf.constant(-np.inf, x.dtype))], 1)
    chunks = tf.reshape(x, [-1, (n + pad) // chunk, chunk])
    _, picked = tf.math.top_k(tf.reduce_max(chunks, axis=2), k=k)
    picked = tf.sort(picked, axis=1)
    values, at = tf.math.top_k(tf.reshape(tf.gather(chunks, picked, batch_dims=1), [-1, k * chunk]), k=k)
    indices = tf.gather(picked, at // chunk, batch_dims=1) * chunk + at % chunk
    shape = tf.concat([lead, [k]], 0)
    return tf.reshape(values, shape), tf.reshape(indices, shape)

def ranked_fn(logits, log_probs, finished, lengths, beam_max, t):
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
    return total, total * inv_lp

@tf.function
def current(*a):
    total, ranked = ranked_fn(*a)
    active = tf.shape(total)[0]
    _, top_idx = tf.math.top_k(tf.reshape(ranked, [active, -1]), k=K)
    return top_idx, tf.gather(tf.reshape(total, [active, -1]), top_idx, batch_dims=1)

@tf.function
def chunked(*a):
    total, ranked = ranked_fn(*a)
    active = tf.shape(total)[0]
    _, cand = top_k_last(ranked, K)
    _, top_idx = tf.math.top_k(tf.reshape(tf.gather(ranked, cand, batch_dims=2), [active, -1]), k=K)
    parent = top_idx // K
    token = tf.gather(tf.reshape(cand, [active, -1]), top_idx, batch_dims=1)
    return parent * V + token, tf.gather(tf.reshape(tf.gather(total, cand, batch_dims=2), [active, -1]), top_idx, batch_dims=1)

@tf.function
def flatchunked(*a):
    total, ranked = ranked_fn(*a)
    active = tf.shape(total)[0]
    _, top_idx = top_k_last(tf.reshape(ranked, [active, -1]), K)
    return top_idx, tf.gather(tf.reshape(total, [active, -1]), top_idx, batch_dims=1)

xla_ranked = tf.function(ranked_fn, jit_compile=True)

@tf.function(jit_compile=True)
def xla_rest(logp, log_probs, finished, force, inv_grow, inv_stay):
    vocab = tf.shape(logp)[2]
    eos_only = tf.where(tf.range(vocab) == EOS, 0.0, NEG_INF)
    logp = tf.where(force[:, :, tf.newaxis], eos_only[tf.newaxis, tf.newaxis], logp)
    total = log_probs[:, :, tf.newaxis] + logp
    grows = tf.logical_and(tf.logical_not(finished)[:, :, tf.newaxis],
                           tf.not_equal(tf.range(vocab), EOS)[tf.newaxis, tf.newaxis])
    return total, total * tf.where(grows, inv_grow[:, :, tf.newaxis], inv_stay[:, :, tf.newaxis])

@tf.function
def tf_lsm_xla_rest(logits, log_probs, finished, lengths, beam_max, t):
    active = tf.shape(log_probs)[0]
    logp = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [active, K, 8000])
    force = tf.logical_or(finished, t >= beam_max)
    total, ranked = xla_rest(logp, log_probs, finished, force, 1.0 / length_penalty(lengths + 1, 0.6), 1.0 / length_penalty(lengths, 0.6))
    _, top_idx = top_k_last(tf.reshape(ranked, [active, K * 8000]), K)
    return top_idx, tf.gather(tf.reshape(total, [active, -1]), top_idx, batch_dims=1)

@tf.function
def xla_then_chunked(*a):
    total, ranked = xla_ranked(*a)
    active = tf.shape(total)[0]
    _, top_idx = top_k_last(tf.reshape(ranked, [active, -1]), K)
    return top_idx, tf.gather(tf.reshape(total, [active, -1]), top_idx, batch_dims=1)

@tf.function(jit_compile=True)
def xla_all(*a):
    total, ranked = ranked_fn(*a)
    active = tf.shape(total)[0]
    _, top_idx = tf.math.top_k(tf.reshape(ranked, [active, -1]), k=K)
    return top_idx, tf.gather(tf.reshape(total, [active, -1]), top_idx, batch_dims=1)

# the two runs of score-variants.txt: `score_variants.py 1`, then `score_variants.py 2`
RUN = sys.argv[1] if len(sys.argv) > 1 else "1"
VARIANTS = {
    "1": [("chunked", chunked), ("flatchunked", flatchunked),
          ("xla_then_chunked", xla_then_chunked), ("xla_all", xla_all)],
    "2": [("flatchunked", flatchunked), ("tf_lsm_xla_rest", tf_lsm_xla_rest),
          ("xla_then_chunked", xla_then_chunked)],
}

for sents in (32, 1):
    rows = sents * K
    logits = tf.cast(tf.random.normal([rows, V]) * 3, tf.bfloat16)
    args = (logits, tf.random.normal([sents, K]) - 5, tf.random.uniform([sents, K]) < 0.2,
            tf.fill([sents, K], 4), tf.fill([sents, K], 30), tf.constant(5))
    print(f"# rows {rows}")
    ref = bench(f"current[{rows}]", current, *args)
    for name, fn in VARIANTS[RUN]:
        out = bench(f"{name}[{rows}]", fn, *args)
        print("  same:", bool(np.array_equal(out[0].numpy(), ref[0].numpy())), bool(np.array_equal(out[1].numpy(), ref[1].numpy())), np.abs(out[1].numpy()-ref[1].numpy()).max())
