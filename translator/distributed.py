"""Training on ``tf.distribute``: several GPUs of one machine (``MirroredStrategy``) or
several processes and machines (``MultiWorkerMirroredStrategy``, configured by the standard
``TF_CONFIG`` environment variable).

``train.distribute`` picks the strategy: ``auto`` is ``multi_worker`` when ``TF_CONFIG`` is
set, ``mirrored`` when more than one GPU is visible and ``none`` (plain Keras ``fit`` in
:mod:`translator.training`) otherwise.

Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy (keras#20585), so this module has
its own loop around a train step run by ``strategy.run``; the epoch-end work (dev BLEU,
``metrics.jsonl``, TensorBoard, best/last checkpoints, early stopping, ``state.json``) is the
single-process :class:`~translator.training.EpochEnd`, and the checkpoints are the same
``.keras`` files (a run may resume on another number of workers, or without any).

- The training pairs are dealt out to the workers in whole batches
  (:func:`~translator.pipeline.deal_pairs`: each length bucket's pairs cut into chunks of
  that bucket's batch size, the chunks given out in turn), and each worker buckets its own
  pairs into batches of ``train.batch_tokens``: N workers train with a global batch of about
  N x ``batch_tokens`` tokens, their batches add up to those of one process, and each
  worker's input pipeline reads only its own pairs. (Slicing the pairs, pair ``i`` to worker
  ``i % N``, flushed a partial batch per length bucket on every worker: 15 and 18 batches on
  2 workers where one process has 23, tiny config.)
- The loss of a step is the sum of the per-token losses over every replica's batch divided by
  the all-reduced number of target tokens of the step: the gradient is that of one batch made
  of all the replicas' batches. Gradients are all-reduced (summed) once, then clipped by their
  global norm and applied by the Keras optimizer.
- Workers agree on the steps per epoch (the number of batches divided by the number of
  replicas, rounded down); the at most replicas - 1 batches beyond that are left out of that
  epoch (other pairs each epoch, since the shuffle differs), and said so.
- At start-up every worker compares the hash of its resolved config (less ``run_dir``) and of
  its prepared data with every other worker's (an all-gather); a mismatch stops them all.
- Only the chief decodes the dev set (no collective runs inside decoding); its dev loss and
  BLEU reach the other workers by an all-gather, so every worker takes the same early-stopping
  decision. Only the chief writes to ``run_dir``; the others prepare and write into a temp dir
  of their own, deleted at the end.
- On a resume the chief loads its last checkpoint and sends the weights, optimizer state and
  ``state.json`` to the others: a worker that was killed and restarted needs nothing on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from translator.config import Config, ConfigError, config_to_dict
from translator.errors import RunError, UserError
from translator.pipeline import (
    Encoded,
    count_batches,
    deal_pairs,
    filter_by_length,
    make_dataset,
)
from translator.prepare import RunPaths, ensure_prepared, read_prepared_split
from translator.tokenizer import Tokenizers
from translator.training import (
    EpochEnd,
    SmoothedCrossEntropy,
    _load_for_resume,
    _truncate_metrics,
    check_resume_settings,
    compile_model,
    diverged,
    interrupted,
    precision_policy,
    remove_leftover_temps,
    require_training_pairs,
    run_lock,
    stream_seed,
)
from translator.translator import Translator

log = logging.getLogger(__name__)

TF_CONFIG_ENV = "TF_CONFIG"
EVERY_WORKER = "the same command on every worker"  # how a distributed run resumes
#: The job names a TF_CONFIG may have here (parameter servers and evaluators are not used).
JOBS = ("chief", "worker")


# ----------------------------------------------------------------------------- TF_CONFIG


@dataclass(frozen=True)
class Cluster:
    """What ``TF_CONFIG`` says: every worker's ``host:port`` (chief first) and which one this
    process is."""

    addresses: tuple[str, ...]  # chief (if any), then the workers in order
    index: int  # this process's position in ``addresses``
    task: str  # "chief/0", "worker/1", ...

    @property
    def workers(self) -> int:
        return len(self.addresses)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(a for i, a in enumerate(self.addresses) if i != self.index)


def parse_tf_config(text: str) -> Cluster:
    """Check ``TF_CONFIG`` and read it; :class:`UserError` naming what is wrong."""
    def bad(what: str) -> UserError:
        return UserError(f"{TF_CONFIG_ENV}: {what}; expected e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}} (see README, '
                         '"Multi-worker training")')

    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cluster"), dict):
        raise bad('no "cluster" mapping')
    cluster = raw["cluster"]
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise bad(f"unsupported job {job!r} in cluster (use {' and '.join(JOBS)})")
        if not isinstance(addresses, list) or not addresses:
            raise bad(f"cluster.{job} must be a non-empty list of \"host:port\"")
        for address in addresses:
            host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise bad(f"cluster.{job}: {address!r} is not \"host:port\"")
    if len(cluster.get("chief", [])) > 1:
        raise bad("cluster.chief has more than one address")
    if "worker" not in cluster and "chief" not in cluster:
        raise bad("the cluster has no workers")
    task = raw.get("task")
    if not isinstance(task, dict):
        raise bad('no "task" mapping')
    job, index = task.get("type"), task.get("index")
    if job not in cluster:
        raise bad(f"task.type {job!r} is not a job of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[job]):
        raise bad(f"task.index {index!r} is not an index into cluster.{job} "
                  f"(0..{len(cluster[job]) - 1})")
    addresses = tuple(cluster.get("chief", [])) + tuple(cluster.get("worker", []))
    if len(set(addresses)) != len(addresses):
        raise bad("an address occurs twice in the cluster")
    position = index if job == "chief" else len(cluster.get("chief", [])) + index
    return Cluster(addresses, position, f"{job}/{index}")


def resolve_distribute(setting: str, environ: Any = os.environ) -> str:
    """``train.distribute`` resolved: ``none``, ``mirrored`` or ``multi_worker``.

    Reads ``TF_CONFIG`` and lists the GPUs; runs no TF op (``MultiWorkerMirroredStrategy``
    must be created before any)."""
    has_tf_config = bool(environ.get(TF_CONFIG_ENV, "").strip())
    if setting == "auto":
        if has_tf_config:
            setting = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            setting = "mirrored"
        else:
            setting = "none"
    if setting == "multi_worker":
        if not has_tf_config:
            raise UserError(f"train.distribute=multi_worker needs {TF_CONFIG_ENV} (the cluster "
                            "and this worker's place in it; see README, \"Multi-worker "
                            "training\"), or use scripts/launch_local_cluster.py")
        parse_tf_config(environ[TF_CONFIG_ENV])
    return setting


def _reachable(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_workers(cluster: Cluster, timeout: float) -> None:
    """Wait until every other worker answers on its address, up to ``timeout`` seconds, then
    :class:`UserError` naming those that did not.

    TensorFlow's own start-up waits for the cluster without a deadline (and ignores SIGTERM
    while it waits), so a missing or mistyped worker would hang every other one. Meanwhile
    this worker listens on its own port (until the strategy's server takes it over), so
    the others see it, whichever starts first. Like TensorFlow's server, it listens on every
    interface: the address in ``TF_CONFIG`` is how the others reach this worker (a DNS name,
    an address behind NAT or a mapped port), not necessarily one of its own."""
    host, _, port = cluster.addresses[cluster.index].rpartition(":")
    listener = None
    try:
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::" if ":" in host else "", int(port)))
        listener.listen(64)
    except OSError as exc:
        if listener is not None:
            listener.close()
        raise UserError(f"{TF_CONFIG_ENV}: worker {cluster.task} cannot listen on port {port} "
                        f"({exc.strerror or exc}); is the port taken?") from None
    try:
        waiting = list(cluster.others)
        deadline = time.monotonic() + timeout
        while waiting:
            waiting = [a for a in waiting if not _reachable(a)]
            if waiting and time.monotonic() >= deadline:
                raise UserError(
                    f"{TF_CONFIG_ENV}: worker {cluster.task} waited {timeout:g} s "
                    f"(train.distribute_timeout) and nothing answers at {', '.join(waiting)}; "
                    "start `translator train` with the same config on every worker of "
                    "TF_CONFIG, or fix the addresses")
            if waiting:
                time.sleep(0.2)
    finally:
        listener.close()


def make_strategy(mode: str, cluster: Cluster | None, timeout: float) -> tf.distribute.Strategy:
    """The strategy for ``mode``; for ``multi_worker``, waits up to ``timeout`` seconds for
    every worker of ``cluster`` (then :class:`UserError` naming the ones not reachable).
    Collectives use RING on CPU, NCCL on GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if mode == "mirrored":
        return tf.distribute.MirroredStrategy()
    assert cluster is not None
    from tensorflow.python.distribute import collective_all_reduce_strategy as cars

    wait_for_workers(cluster, timeout)
    # The constructor then waits for every worker (a barrier all-reduce); its timeout is this
    # class attribute, 0 (wait forever) by default, and no public argument sets it.
    cars.CollectiveAllReduceExtended._check_health_initial_timeout = max(1, math.ceil(timeout))
    impl = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
            else tf.distribute.experimental.CommunicationImplementation.RING)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=impl))
    except (RuntimeError, tf.errors.OpError) as exc:
        missing = [a for a in cluster.others if not _reachable(a)]
        who = (f"nothing answers at {', '.join(missing)}" if missing
               else f"the workers did not all join ({str(exc).splitlines()[0][:160]})")
        raise UserError(
            f"{TF_CONFIG_ENV}: worker {cluster.task} ({cluster.addresses[cluster.index]}) waited "
            f"{timeout:g} s (train.distribute_timeout) for the cluster and {who}; start "
            "`translator train` with the same config on every worker of TF_CONFIG, or fix "
            "the addresses") from None


# ----------------------------------------------------------------------------- collectives


@functools.cache
def _all_gather(strategy: tf.distribute.Strategy) -> Callable:
    # an all-reduce of one-hot placed rows: MWMS's all_gather inside a tf.function fails
    # ("destinations can not be empty"), and eager strategy.run is slow and warns
    replicas = strategy.num_replicas_in_sync

    def fn(value):
        ctx = tf.distribute.get_replica_context()
        place = tf.one_hot(ctx.replica_id_in_sync_group, replicas, dtype=tf.float64)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, place[:, None] * value)

    return tf.function(lambda value: strategy.run(fn, args=(value,)), reduce_retracing=True)


def gather_rows(strategy: tf.distribute.Strategy, row: Sequence[float]) -> np.ndarray:
    """Every replica's copy of this worker's ``row`` (float64), one row per replica, as
    every worker sees them."""
    values = np.asarray(row, np.float64)
    nan = np.isnan(values)  # NaN * 0 is NaN: send NaNs as flags
    sent = np.concatenate([np.where(nan, 0.0, values), nan.astype(np.float64)])
    out = _all_gather(strategy)(tf.constant(sent, tf.float64))
    rows = strategy.experimental_local_results(out)[0].numpy()
    k = len(values)
    return np.where(rows[:, k:] > 0, np.nan, rows[:, :k])


def from_chief(strategy: tf.distribute.Strategy, chief: bool, row: Sequence[float]) -> np.ndarray:
    """The chief's ``row`` (the others pass a row of the same length) on every worker."""
    rows = gather_rows(strategy, [1.0 if chief else 0.0, *row])
    return rows[rows[:, 0] == 1.0][0, 1:]


def broadcast_variables(strategy: tf.distribute.Strategy, chief: bool,
                        variables: Sequence[Any]) -> None:
    """Give every worker the chief's values of ``variables`` (an all-reduce in which only the
    chief's first local replica contributes)."""
    workers = strategy.extended._num_workers if hasattr(strategy.extended, "_num_workers") else 1
    local = max(1, strategy.num_replicas_in_sync // max(1, workers))
    tensors = [v.value if isinstance(v, keras.Variable) else v for v in variables]

    def fn():
        ctx = tf.distribute.get_replica_context()
        first = tf.equal(tf.math.floormod(ctx.replica_id_in_sync_group, local), 0)
        mask = tf.cast(tf.logical_and(first, chief), tf.float64)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                              [tf.cast(t, tf.float64) * mask for t in tensors])

    out = tf.function(lambda: strategy.run(fn))()
    for var, value in zip(variables, out, strict=True):
        var.assign(tf.cast(strategy.experimental_local_results(value)[0], var.dtype))


def weights_digest(variables: Sequence[Any]) -> str:
    """sha256 over the shape and bytes of every variable, in order: equal on workers in sync.
    (Not the names: a chief that loaded a checkpoint has built one model more, so Keras
    numbers its layers differently.)"""
    h = hashlib.sha256()
    for v in variables:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(v))
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _digest_row(text: str | bytes) -> list[float]:
    data = text.encode() if isinstance(text, str) else text
    d = hashlib.sha256(data).digest()
    return [float(int.from_bytes(d[i:i + 4], "big")) for i in range(0, 32, 4)]


def setup_digests(cfg: Config, paths: RunPaths) -> tuple[str, str]:
    """sha256 of the resolved config less ``run_dir`` and of the prepared data (tokenizer
    models and corpus files)."""
    raw = config_to_dict(cfg)
    raw.pop("run_dir")
    config = json.dumps(raw, sort_keys=True)
    h = hashlib.sha256()
    files = sorted(p for p in paths.root.glob("*.model")) + sorted(
        p for p in (paths.root / "corpus").glob("*") if p.is_file())
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return config, h.hexdigest()


def check_same_setup(strategy: tf.distribute.Strategy, cluster: Cluster, cfg: Config,
                     paths: RunPaths) -> None:
    """Every worker must train the same config on the same data: compare hashes."""
    config, data = setup_digests(cfg, paths)
    rows = gather_rows(strategy, _digest_row(config) + _digest_row(data))
    per_replica = strategy.num_replicas_in_sync // cluster.workers
    if not (rows[:, :8] == rows[0, :8]).all():
        odd = sorted({i // per_replica for i in np.nonzero((rows[:, :8] != rows[0, :8]).any(1))[0]})
        raise UserError(
            f"{TF_CONFIG_ENV}: the workers were started with different configs (worker(s) at "
            f"{', '.join(cluster.addresses[i] for i in odd)} differ from "
            f"{cluster.addresses[0]}: the hash of the resolved config, less run_dir, is not the "
            "same); start every worker with the same config file and --set options")
    if not (rows[:, 8:] == rows[0, 8:]).all():
        raise UserError(
            f"{TF_CONFIG_ENV}: the workers' prepared data differ (corpus or tokenizer files "
            f"in {paths.root}); give every worker the same corpus under --data-root")


# ----------------------------------------------------------------------------- the step


def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model,
                    loss_fn: keras.losses.Loss) -> Callable:
    """A ``tf.function`` taking a distributed iterator: one optimizer step on the next batch
    of every replica. Returns ``[loss sum, target tokens, correct tokens]`` over all replicas.

    The per-token loss is divided by the all-reduced target-token count of the step, so
    the summed gradient is that of the global batch. The gradients are all-reduced here,
    once; the Keras optimizer would all-reduce them again after clipping each replica's part
    by its own norm, so its all-reduce is turned off on this optimizer (it then clips the
    global gradient, as on one device)."""
    optimizer = model.optimizer
    # keras/src/backend/tensorflow/optimizer.py: TFOptimizer._backend_update_step sums the
    # gradients over replicas; ours are summed already (tests/test_distributed.py checks the
    # step against one single-device step, which catches a Keras that renames this hook)
    optimizer._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)
    variables = model.trainable_variables

    def replica_step(batch):
        inputs, target, weight = batch
        ctx = tf.distribute.get_replica_context()
        tokens = tf.reduce_sum(weight)
        global_tokens = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tokens)
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            loss_sum = tf.reduce_sum(loss_fn.call(target, logits) * weight)
            loss = loss_sum / tf.maximum(global_tokens, 1.0)
        grads = tape.gradient(loss, variables)
        # embeddings get IndexedSlices: kept sparse, so that the optimizer sees what it sees
        # on one device (Keras' sparse Adam update differs from the dense one when an id
        # occurs twice in a batch)
        grads = [tf.zeros_like(v) if g is None else g
                 for g, v in zip(grads, variables, strict=True)]
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        optimizer.apply(grads, variables)
        hit = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                               tf.cast(target, tf.int32)), tf.float32)
        return tf.stack([loss_sum, tokens, tf.reduce_sum(hit * weight)])

    @tf.function
    def train_step(iterator):
        out = strategy.run(replica_step, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)

    return train_step


def make_dev_loss(model: keras.Model, loss_fn: keras.losses.Loss) -> Callable:
    """Token-weighted mean loss over a (non-distributed) dataset, on this worker alone."""
    @tf.function(reduce_retracing=True)
    def sums(inputs, target, weight):
        logits = model(inputs, training=False)
        return tf.reduce_sum(loss_fn.call(target, logits) * weight), tf.reduce_sum(weight)

    def dev_loss(ds) -> float:
        total = tokens = 0.0
        for inputs, target, weight in ds:
            s, n = sums(inputs, target, weight)
            total += float(s)
            tokens += float(n)
        return total / max(tokens, 1.0)

    return dev_loss


# ----------------------------------------------------------------------------- entry point


def train_distributed(cfg: Config, data_root: Path, mode: str, report: Callable[[str], None],
                      on_record: Callable[[dict[str, Any]], None], progress: Any,
                      step: Callable[[str], None]) -> dict[str, Any]:
    """:func:`translator.training.train` on a ``tf.distribute`` strategy (``mirrored`` or
    ``multi_worker``): the chief trains in ``cfg.run_dir``, the other workers in a temp dir."""
    tc = cfg.train
    cluster = (parse_tf_config(os.environ[TF_CONFIG_ENV]) if mode == "multi_worker"
               else Cluster(("localhost",), 0, "chief/0"))
    if tc.mixed_precision:
        raise ConfigError(f"train.mixed_precision is not supported with train.distribute={mode}"
                          " yet; set train.mixed_precision: false or train.distribute: none")
    if cfg.tokenizer.sample_alpha > 0:
        raise ConfigError(f"tokenizer.sample_alpha is not supported with train.distribute={mode}"
                          " yet; set tokenizer.sample_alpha: 0 or train.distribute: none")
    strategy = make_strategy(mode, cluster, tc.distribute_timeout)
    if tc.jit_compile:
        report("train.jit_compile is ignored under tf.distribute (Keras turns XLA off there)")
    with precision_policy(tc.mixed_precision):  # float32: the others are refused above
        try:
            if cluster.is_chief:
                paths = RunPaths(Path(cfg.run_dir))
                with run_lock(paths):
                    removed = remove_leftover_temps(paths)
                    if removed:
                        report(f"removed {', '.join(removed)}: partial writes of a train that was "
                               "killed")
                    return _train(cfg, data_root, strategy, mode, cluster, report, on_record,
                                  progress, step)
            # the others write everything the chief writes, into a dir of their own that goes at
            # the end (the same code on every worker: a save that all-reduced could not deadlock).
            # Its name follows from the run dir and the task, so a worker that was SIGKILLed
            # leaves at most one such dir behind, which its next start removes.
            scratch = worker_scratch_dir(cfg.run_dir, cluster.task)
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            try:
                summary = _train(dataclasses.replace(cfg, run_dir=str(scratch / "run")), data_root,
                                 strategy, mode, cluster, report, lambda record: None, None, step)
                return {**summary, "run_dir": cfg.run_dir}
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        except tf.errors.OpError as exc:
            # a collective outside the epoch loop (start-up checks, resume broadcast, the final
            # barrier) failed: another worker stopped (its own error says why) or was lost
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise RunError(
                f"worker {cluster.task}: lost the other workers outside an epoch "
                f"({type(exc).__name__}: {first}); see the other workers' errors, then re-run the "
                "same command on every worker") from None


def worker_scratch_dir(run_dir: str, task: str) -> Path:
    """Where a non-chief worker writes what the chief writes in ``run_dir``."""
    key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"translator-{task.replace('/', '')}-{key}"


def _train(cfg: Config, data_root: Path, strategy: tf.distribute.Strategy, mode: str,
           cluster: Cluster, report: Callable[[str], None],
           on_record: Callable[[dict[str, Any]], None], progress: Any,
           step: Callable[[str], None]) -> dict[str, Any]:
    tc = cfg.train
    chief = cluster.is_chief
    paths = ensure_prepared(cfg, data_root, step)
    state: dict[str, Any] = {}
    loaded = None
    if chief and paths.train_state.is_file():
        state = json.loads(paths.train_state.read_text(encoding="utf-8"))
        if int(state.get("epoch", 0)):
            check_resume_settings(paths, cfg)
            loaded = _load_for_resume(paths, state, tc.seed)  # may rewind state to an earlier epoch
    check_same_setup(strategy, cluster, cfg, paths)
    # the chief's resume state, on every worker
    keys = ("epoch", "best_bleu", "best_epoch", "bad_epochs", "train_wall_seconds")
    row = from_chief(strategy, chief, [float(state.get(k, -1.0 if k == "best_bleu" else 0.0))
                                       for k in keys])
    if not chief:
        state = {k: (float(v) if k in ("best_bleu", "train_wall_seconds") else int(v))
                 for k, v in zip(keys, row, strict=True)}
        if state["epoch"]:
            state["last"] = paths.epoch_checkpoint(state["epoch"]).name
        else:
            state = {}
    initial_epoch = int(state.get("epoch", 0))
    seed = stream_seed(tc.seed, initial_epoch)
    keras.utils.set_random_seed(seed)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    tokenizers = Tokenizers.load(paths.root)
    train_ids, dropped, _, lengths = filter_by_length(
        read_prepared_split(paths, "train"), tokenizers, tc.max_len)
    require_training_pairs(len(train_ids), dropped, tc.max_len)
    if dropped:
        report(f"train: {dropped} pairs longer than train.max_len={tc.max_len} subwords skipped")

    total = count_batches(lengths, max_len=tc.max_len, batch_tokens=tc.batch_tokens,
                          bucketing=tc.bucketing, fixed_batch_size=tc.fixed_batch_size)
    shard: dict[str, int] = {}

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        i, n = ctx.input_pipeline_id, ctx.num_input_pipelines
        mine = deal_pairs(lengths, n, max_len=tc.max_len, batch_tokens=tc.batch_tokens,
                          bucketing=tc.bucketing, fixed_batch_size=tc.fixed_batch_size,
                          seed=seed)[i]
        ids = Encoded([train_ids.src[j] for j in mine], [train_ids.tgt[j] for j in mine])
        shard_lengths = [lengths[j] for j in mine]
        shard.update(pairs=len(ids), batches=count_batches(
            shard_lengths, max_len=tc.max_len, batch_tokens=tc.batch_tokens,
            bucketing=tc.bucketing, fixed_batch_size=tc.fixed_batch_size))
        return make_dataset(ids, max_len=tc.max_len, batch_tokens=tc.batch_tokens, shuffle=True,
                            seed=seed, shuffle_buffer=tc.shuffle_buffer, bucketing=tc.bucketing,
                            fixed_batch_size=tc.fixed_batch_size, lengths=shard_lengths)

    dist_ds = strategy.distribute_datasets_from_function(dataset_fn)
    if "batches" not in shard:
        raise RuntimeError("distribute_datasets_from_function did not build the dataset")
    local_replicas = strategy.num_replicas_in_sync // cluster.workers
    counts = gather_rows(strategy, [shard["batches"] // local_replicas, shard["batches"]])
    steps = int(counts[:, 0].min())
    replicas = strategy.num_replicas_in_sync
    if steps < 1:
        fewer = "workers" if cluster.workers > 1 else "devices"
        smaller = "train.fixed_batch_size" if not tc.bucketing else "train.batch_tokens"
        remedy = (f"use fewer {fewer} or smaller batches (a smaller {smaller})"
                  if len(train_ids) >= replicas else f"use fewer {fewer}")
        raise UserError(
            f"train: {len(train_ids):,} training pairs make {total:,} "
            f"batch{'' if total == 1 else 'es'}, fewer than the {replicas} replicas "
            f"({cluster.workers} worker(s) x {local_replicas} device(s)), and every replica "
            f"needs a batch of its own each step; {remedy}")
    left_out = total - steps * replicas
    report(f"{mode}: {cluster.workers} worker(s), {replicas} replica(s); "
           f"{len(train_ids):,} pairs in {total:,} batches, dealt out by whole batches: this "
           f"worker ({cluster.task}) has {shard['pairs']:,} pairs in {shard['batches']:,}; "
           f"every worker runs {steps:,} steps per epoch"
           + (f" ({left_out} batch{'' if left_out == 1 else 'es'} of each epoch's shuffle left out)"
              if left_out else ""))

    with strategy.scope():
        model = _build(cfg, tokenizers, steps)
    if loaded is not None:
        _copy_into(loaded, model)
        report(f"resuming from {state['last']} (epoch {initial_epoch}, optimizer step "
               f"{int(model.optimizer.iterations.numpy())}; shuffle and dropout reseeded with "
               f"{seed})")
    if mode == "multi_worker" and initial_epoch:
        broadcast_variables(strategy, chief, [*model.weights, *model.optimizer.variables])
    if chief:
        if initial_epoch:
            _truncate_metrics(paths.metrics, initial_epoch)
        elif paths.metrics.exists():
            paths.metrics.unlink()
    loss_fn = SmoothedCrossEntropy(tc.label_smoothing)
    train_step = make_train_step(strategy, model, loss_fn)
    dev = read_prepared_split(paths, "dev") if chief else None
    dev_ds = None
    if dev is not None and len(dev):
        dev_ids, dev_dropped, _, dev_lengths = filter_by_length(dev, tokenizers, tc.max_len)
        if dev_dropped:
            report(f"dev loss: {dev_dropped} pairs longer than {tc.max_len} subwords left out "
                   "(dev BLEU uses all)")
        dev_ds = make_dataset(dev_ids, max_len=tc.max_len, batch_tokens=tc.batch_tokens,
                              shuffle=False, lengths=dev_lengths)
    dev_loss = make_dev_loss(model, loss_fn)
    report(f"model: {model.count_params():,} parameters; train pairs {len(train_ids):,}, "
           f"dev pairs {len(dev) if dev else 0:,}")
    summary = {"strategy": mode, "workers": cluster.workers, "worker": cluster.task,
               "replicas": strategy.num_replicas_in_sync, "steps_per_epoch": steps}
    if initial_epoch >= tc.epochs or state.get("bad_epochs", 0) >= tc.patience:
        report(f"nothing to do: finished at epoch {initial_epoch} "
               f"(best dev BLEU {state.get('best_bleu')} at epoch {state.get('best_epoch')})")
    else:
        from translator.config import dump_config
        from translator.fileio import write_text_atomic

        write_text_atomic(paths.config, dump_config(cfg))
        callback = DistributedEpochEnd(paths, cfg, Translator(model, tokenizers, cfg.decode),
                                       dev, 0, state, report, on_record, steps, progress)
        callback.set_model(model)
        epoch = initial_epoch
        try:
            with callback.ctrl_c.watching():
                for epoch in range(initial_epoch, tc.epochs):
                    _epoch(strategy, chief, callback, train_step, dist_ds, steps, epoch,
                           dev_ds, dev_loss)
                    if model.stop_training:
                        break
        except KeyboardInterrupt:
            raise interrupted(paths, epoch, progress, EVERY_WORKER) from None
        except tf.errors.OpError as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            last = state.get("epoch", 0)
            raise RunError(
                f"worker {cluster.task}: lost the other workers in epoch {epoch + 1} "
                f"({type(exc).__name__}: {first}); re-run the same command on every worker to "
                + (f"resume from epoch {last}" if last else "start over")) from None
        if callback.diverged is not None:
            raise diverged(paths, state, callback.diverged, EVERY_WORKER)
    gather_rows(strategy, [0.0])  # a barrier: the chief's server stays up until all are done
    summary["weights_sha256"] = weights_digest([*model.weights, *model.optimizer.variables])
    return {"run_dir": str(paths.root), "parameters": model.count_params(), "seed": seed,
            "epochs": tc.epochs, **summary, **state}


def _build(cfg: Config, tokenizers: Tokenizers, steps: int) -> keras.Model:
    """The model and its optimizer, variables created (call under ``strategy.scope()``)."""
    from translator.model import build_model

    tc = dataclasses.replace(cfg.train, jit_compile=False)
    model = build_model(cfg.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)
    compile_model(model, tc, total_steps=tc.epochs * steps)
    model.optimizer.build(model.trainable_variables)
    return model


def _copy_into(loaded: keras.Model, model: keras.Model) -> None:
    """The weights and optimizer state of a loaded checkpoint, into the distributed model."""
    pairs = [*zip(model.weights, loaded.weights, strict=True),
             *zip(model.optimizer.variables, loaded.optimizer.variables, strict=True)]
    for dst, src in pairs:
        value = keras.ops.convert_to_numpy(src)
        if tuple(dst.shape) != value.shape:
            raise RunError(f"the checkpoint's {src.path} has shape {value.shape}, the model's "
                           f"{dst.path} {tuple(dst.shape)}")
        dst.assign(value)


class DistributedEpochEnd(EpochEnd):
    """:class:`~translator.training.EpochEnd` whose dev BLEU is the one the chief computed
    and sent to every worker for this epoch (``shared_bleu``)."""

    shared_bleu: float | None = None

    def own_dev_bleu(self) -> float | None:
        return super().dev_bleu()

    def dev_bleu(self) -> float | None:
        return self.shared_bleu


def _epoch(strategy: tf.distribute.Strategy, chief: bool, callback: Any, train_step: Callable,
           dist_ds: Any, steps: int, epoch: int, dev_ds: Any, dev_loss: Callable) -> None:
    model = callback.model
    callback.on_epoch_begin(epoch)
    iterator = iter(dist_ds)
    sums = np.zeros(3)
    for batch in range(steps):
        out = train_step(iterator).numpy()
        callback.ctrl_c.check()
        sums += out
        loss = out[0] / max(out[1], 1.0)
        if callback.progress is not None:
            callback.progress.batch_end({"loss": sums[0] / max(sums[1], 1.0)})
        if not math.isfinite(loss):  # the same global loss on every worker
            step = int(model.optimizer.iterations.numpy())
            callback.diverged = (f"the training loss became {loss} in epoch {epoch + 1}, batch "
                                 f"{batch + 1} (optimizer step {step})")
            break
    callback.on_test_begin()
    start = time.perf_counter()
    values = [math.nan, math.nan]
    if chief and callback.diverged is None:  # no collective in here: the others wait below
        bleu = callback.own_dev_bleu()
        values = [dev_loss(dev_ds) if dev_ds is not None else math.nan,
                  math.nan if bleu is None else bleu]
    shared = from_chief(strategy, chief, values)
    log.debug("dev set: %.1f s", time.perf_counter() - start)
    callback.shared_bleu = None if math.isnan(shared[1]) else float(shared[1])
    callback.target_tokens = sums[1]
    callback.on_epoch_end(epoch, {
        "loss": sums[0] / max(sums[1], 1.0), "acc": sums[2] / max(sums[1], 1.0),
        "val_loss": None if math.isnan(shared[0]) else float(shared[0])})
