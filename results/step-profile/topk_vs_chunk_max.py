"""One thread, process CPU time: ``top_k`` (k=5) over 32 x 40,000 candidates (a server's
batch at beam 5, 8k vocabulary) against a ``reduce_max`` over chunks of 64 of the same
tensor, the first stage of a chunked ``top_k``."""
import resource

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench(name, fn, x, n=100):
    for _ in range(5):
        out = fn(x)
    c0 = cpu()
    for _ in range(n):
        out = fn(x)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    print(name, round((cpu() - c0) / n * 1e3, 3), "ms CPU", flush=True)


x = tf.random.normal([32, 5, 8000]) - 10
bench("top_k over 40,000", tf.function(lambda x: tf.math.top_k(tf.reshape(x, [32, -1]), k=5)), x)
bench("top_k over 40,000, sorted=False",
      tf.function(lambda x: tf.math.top_k(tf.reshape(x, [32, -1]), k=5, sorted=False)), x)
bench("reduce_max over chunks of 64",
      tf.function(lambda x: tf.reduce_max(tf.reshape(x, [32, 5, 125, 64]), -1)), x)
