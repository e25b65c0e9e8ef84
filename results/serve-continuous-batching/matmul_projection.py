"""The output projection's matmul, (rows x 512) x (512 x 8,000), in float32 and bfloat16, at
5 rows (one sentence, beam 5) and 160 (32 sentences): milliseconds and GFLOP/s, mean of 50
calls of a tf.function. Run once with TF_ENABLE_ONEDNN_OPTS=0 and once with =1 (output:
matmul_projection.out; reformatted for ruff after the run, same logic)."""

import os
import time

import tensorflow as tf


def bench(m, k, n, dtype, reps=50):
    a = tf.cast(tf.random.normal([m, k]), dtype)
    b = tf.cast(tf.random.normal([k, n]), dtype)
    f = tf.function(lambda x, y: tf.matmul(x, y))
    f(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        r = f(a, b)
    r.numpy()
    dt = (time.perf_counter() - t) / reps
    return dt * 1000, 2 * m * k * n / dt / 1e9


for m in (5, 160):
    for dtype in (tf.float32, tf.bfloat16):
        ms, gflops = bench(m, 512, 8000, dtype)
        print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), m, dtype.name, round(ms, 3), "ms",
              round(gflops, 1), "GFLOP/s")
