"""Run by tests/test_distributed.py in a fresh process: the dropout masks of the replicas of
a distributed step. Prints one JSON line.

``mirrored``: 2 logical CPU devices. The seq2seq model with dropout, the same batch on both
replicas, training=True; also the model without dropout, and replica_dropout against
keras.random.dropout outside any strategy.
``worker``: one MultiWorkerMirroredStrategy worker (TF_CONFIG from the environment); the
replica id and a hash of a dropout mask drawn from a generator seeded the same on every
worker.
"""
import hashlib
import json
import sys

import tensorflow as tf

mode = sys.argv[1]
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from translator.model.dropout import replica_dropout, replica_id  # noqa: E402

if mode == "worker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        gen = keras.random.SeedGenerator(7)

    @tf.function
    def draw():
        return strategy.run(lambda: (replica_id(), replica_dropout(tf.ones((64, 64)), 0.5, gen)))

    rid, mask = (strategy.experimental_local_results(v)[0] for v in draw())
    print(json.dumps({"replica_id": int(rid), "replicas": strategy.num_replicas_in_sync,
                      "mask_sha256": hashlib.sha256(mask.numpy().tobytes()).hexdigest(),
                      "kept": float(tf.reduce_mean(tf.cast(mask > 0, tf.float32)))}))
    sys.exit(0)

from translator.config import ModelConfig  # noqa: E402
from translator.model import build_model  # noqa: E402

# outside a strategy: the masks keras.random.dropout draws, from the same generator state
ones = tf.ones((64, 64))
ours = replica_dropout(ones, 0.3, keras.random.SeedGenerator(11))
theirs = keras.random.dropout(ones, 0.3, seed=keras.random.SeedGenerator(11))
same_as_keras = bool(tf.reduce_all(ours == theirs))

rng = np.random.default_rng(0)
src = rng.integers(4, 50, (4, 7)).astype("int32")
tin = rng.integers(4, 60, (4, 6)).astype("int32")
inputs = {"source_ids": tf.constant(src), "target_in": tf.constant(tin)}
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def replica_logits(dropout: float, training: bool):
    """Logits of both replicas on the same batch, and of a single-device twin (same
    weights, same seeds) run once."""
    config = ModelConfig(embed_dim=16, hidden_size=32, dropout=dropout, embed_dropout=dropout)
    keras.utils.set_random_seed(3)
    single = build_model(config, 50, 60)
    keras.utils.set_random_seed(3)
    with strategy.scope():
        dist = build_model(config, 50, 60)
    dist.set_weights(single.get_weights())
    alone = single(inputs, training=training).numpy()
    run = tf.function(lambda: strategy.run(lambda: dist(inputs, training=training)))
    r0, r1 = (t.numpy() for t in strategy.experimental_local_results(run()))
    return r0, r1, alone


def differ(a, b) -> float:
    return float(np.abs(a - b).max())


r0, r1, alone = replica_logits(0.3, training=True)
p0, p1, _ = replica_logits(0.0, training=True)
e0, e1, _ = replica_logits(0.3, training=False)
print(json.dumps({
    "same_as_keras": same_as_keras,
    "kept_share": float(tf.reduce_mean(tf.cast(ours > 0, tf.float32))),
    "replicas_differ_with_dropout": differ(r0, r1),
    "replica0_vs_single_device": differ(r0, alone),
    "replicas_differ_without_dropout": differ(p0, p1),
    "replicas_differ_in_inference": differ(e0, e1),
}))
