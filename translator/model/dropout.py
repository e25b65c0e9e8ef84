"""Dropout whose masks differ between the replicas of a ``tf.distribute`` step.

Keras draws a dropout seed from a ``SeedGenerator`` whose state is a variable. Under a
distribution strategy that variable is mirrored, so every replica (every device, every
worker) reads the same state and draws the *same* mask on its own slice of the global
batch: N replicas then regularize like one replica with an N times smaller batch. Here
the drawn seed is folded with the global replica id (``replica_id_in_sync_group``).
Replica 0, and any run without a strategy, uses the drawn seed unchanged, so it draws
exactly the masks ``keras.random.dropout`` draws.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def replica_id():
    """The global id of the replica running this code: 0 outside a strategy, an int when
    it is known while tracing, else an int32 tensor."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: one copy runs
        return 0
    rid = context.replica_id_in_sync_group
    static = tf.get_static_value(rid)
    return int(static) if static is not None else rid


def _seed_for_replica(seed):
    """``seed`` (shape ``[2]``) as Keras casts it, folded with the replica id if not 0."""
    if seed.dtype != tf.int32:  # as keras' TensorFlow backend does with its int64 state
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    rid = replica_id()
    if isinstance(rid, int) and rid == 0:
        return seed
    folded = tf.cast(tf.random.experimental.stateless_fold_in(seed, rid), tf.int32)
    return folded if isinstance(rid, int) else tf.where(tf.equal(rid, 0), seed, folded)


def replica_dropout(inputs, rate: float, seed_generator: keras.random.SeedGenerator,
                    noise_shape=None):
    """``keras.random.dropout(inputs, rate, noise_shape, seed=seed_generator)``, with a
    mask of its own on each replica of a distributed step."""
    if rate == 0.0:
        return inputs
    if rate == 1.0:
        return tf.zeros_like(inputs)
    seed = _seed_for_replica(seed_generator.next())
    if noise_shape is not None:  # None entries take the input's size, as in Keras
        shape = tf.shape(inputs)
        noise_shape = tf.stack([shape[i] if d is None else d
                                for i, d in enumerate(noise_shape)])
    return tf.nn.experimental.stateless_dropout(inputs, rate=rate, noise_shape=noise_shape,
                                                seed=seed)


@keras.saving.register_keras_serializable(package="translator")
class ReplicaDropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` with a mask of its own on each replica (see module doc)."""

    def call(self, inputs, training=False):
        if training and self.rate > 0:
            return replica_dropout(inputs, self.rate, self.seed_generator, self.noise_shape)
        return inputs
