"""Run by tests/test_distributed.py in a fresh process (logical devices must be set up
before TensorFlow initialises): one train step of ``make_train_step`` under MirroredStrategy
on 2 logical CPU devices vs one Keras ``train_on_batch`` of the same global batch on one
device. Prints a JSON line with the largest differences. Argument: ``train.clip_norm``."""
import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from translator.config import ModelConfig, TrainConfig  # noqa: E402
from translator.distributed import make_train_step  # noqa: E402
from translator.model import build_model  # noqa: E402
from translator.training import SmoothedCrossEntropy, compile_model  # noqa: E402

clip = float(sys.argv[1])
mc = ModelConfig(embed_dim=16, hidden_size=32, dropout=0.0, embed_dropout=0.0)
tc = TrainConfig(learning_rate=0.01, warmup_steps=0, label_smoothing=0.1, clip_norm=clip)
rng = np.random.default_rng(0)


def half(rows, src_len, tgt_len):
    src = np.zeros((rows, src_len), np.int32)
    tin = np.zeros((rows, tgt_len), np.int32)
    tout = np.zeros((rows, tgt_len), np.int32)
    for r in range(rows):
        n, m = rng.integers(2, src_len + 1), rng.integers(2, tgt_len + 1)
        src[r, :n] = rng.integers(4, 50, n)
        y = rng.integers(4, 60, m)
        tin[r, :m] = np.concatenate([[2], y[:-1]])
        tout[r, :m] = y
    return src, tin, tout


halves = [half(3, 6, 5), half(5, 9, 8)]  # different sizes, lengths and token counts
width_s = max(h[0].shape[1] for h in halves)
width_t = max(h[1].shape[1] for h in halves)
pad = lambda a, w: np.pad(a, ((0, 0), (0, w - a.shape[1])))  # noqa: E731
src = np.concatenate([pad(h[0], width_s) for h in halves])
tin = np.concatenate([pad(h[1], width_t) for h in halves])
tout = np.concatenate([pad(h[2], width_t) for h in halves])

keras.utils.set_random_seed(1)
single = build_model(mc, 50, 60)
compile_model(single, tc)
initial = single.get_weights()
single.train_on_batch({"source_ids": src, "target_in": tin}, tout,
                      sample_weight=(tout != 0).astype("float32"))

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    dist = build_model(mc, 50, 60)
    compile_model(dist, tc)
    dist.optimizer.build(dist.trainable_variables)
dist.set_weights(initial)
step = make_train_step(strategy, dist, SmoothedCrossEntropy(tc.label_smoothing))
spec = ({"source_ids": tf.TensorSpec([None, None], tf.int32),
         "target_in": tf.TensorSpec([None, None], tf.int32)},
        tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32))


def gen():
    for s, i, o in halves:
        yield {"source_ids": s, "target_in": i}, o, (o != 0).astype("float32")


ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
out = step(iter(strategy.distribute_datasets_from_function(lambda ctx: ds))).numpy()
a, b, w0 = single.get_weights(), dist.get_weights(), initial
# Adam's moments scale with the gradient (a gradient summed twice shows here, whereas Adam's
# first weight update does not). Relative to the largest moment of the same kind: variables
# whose gradient is ~0 (1e-10: the attention key bias, say) differ by round-off only.
pairs = [(x.path, x.numpy(), y.numpy()) for x, y in
         zip(single.optimizer.variables, dist.optimizer.variables, strict=True)
         if "float" in str(x.dtype)]
scale = {kind: max(float(np.abs(x).max()) for p, x, _ in pairs if p.endswith(kind))
         for kind in ("momentum", "velocity")}
rel = [float(np.abs(x - y).max()) / max(float(np.abs(x).max()), 1e-3 * scale[p.rsplit("_", 1)[1]])
       for p, x, y in pairs]
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "max_diff": max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)),
    "max_update": max(float(np.abs(x - y).max()) for x, y in zip(a, w0, strict=True)),
    "max_optimizer_rel_diff": max(rel),
    "tokens": float(out[1]), "steps": int(dist.optimizer.iterations.numpy()),
}))
