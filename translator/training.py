"""``train``: Keras ``fit`` with label-smoothed masked cross-entropy, Adam with warmup
and decay, gradient clipping, dev BLEU every epoch, best/last checkpoints, early
stopping on dev BLEU, TensorBoard scalars and ``metrics.jsonl``.

Resume: every epoch writes ``checkpoints/epoch-N.keras`` (model + optimizer state)
atomically, then ``checkpoints/state.json`` pointing at it. Re-running the same
command loads that checkpoint and continues at epoch N + 1; only the settings in
:data:`RESUMABLE_TRAIN_KEYS` may change on the way. The newest
``train.keep_checkpoints`` epoch files are kept, for checkpoint averaging.

Divergence: a non-finite training loss stops training at once, and an epoch whose loss
or weights are not finite writes nothing (no checkpoint, state, pruning, best weights
or metrics): re-running resumes from the last good epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from translator.config import Config, TrainConfig, dump_config, load_config
from translator.corpus import Pairs
from translator.errors import RunError, UserError
from translator.fileio import write_json_atomic, write_text_atomic
from translator.metrics import bleu, bleu_tokenizer
from translator.model import Seq2Seq, build_model
from translator.pipeline import filter_by_length, make_dataset
from translator.prepare import RunPaths, ensure_prepared, read_prepared_split
from translator.tokenizer import Tokenizers
from translator.translator import BEST_WEIGHTS, Translator

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- loss, LR


@keras.saving.register_keras_serializable(package="translator")
class SmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy from logits with label smoothing, averaged over the tokens whose
    ``sample_weight`` is non-zero (padding has weight 0)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_cross_entropy",
                 reduction: str = "mean_with_sample_weight", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        y_true = ops.cast(y_true, "int32")
        nll = -ops.squeeze(ops.take_along_axis(logp, ops.expand_dims(y_true, -1), axis=-1), -1)
        if self.label_smoothing == 0:
            return nll
        uniform = -ops.mean(logp, axis=-1)
        return (1.0 - self.label_smoothing) * nll + self.label_smoothing * uniform

    def get_config(self):
        config = super().get_config()
        config["label_smoothing"] = self.label_smoothing
        return config


@keras.saving.register_keras_serializable(package="translator")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak`` over ``warmup_steps``, then ``kind``:
    ``constant``, ``inverse_sqrt`` (``peak * sqrt(warmup / step)``) or
    ``linear_decay`` (to ``minimum`` over ``decay_steps``). Never below ``minimum``."""

    def __init__(self, peak: float, warmup_steps: int, kind: str = "constant",
                 decay_steps: int = 10000, minimum: float = 0.0):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.kind = kind
        self.decay_steps = decay_steps
        self.minimum = minimum

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        warm = float(max(1, self.warmup_steps))
        lr = self.peak * ops.minimum(1.0, step / warm)
        if self.kind == "inverse_sqrt":
            lr = ops.where(step > warm, self.peak * ops.sqrt(warm / step), lr)
        elif self.kind == "linear_decay":
            frac = ops.clip((step - warm) / float(self.decay_steps), 0.0, 1.0)
            lr = ops.where(step > warm, self.peak + (self.minimum - self.peak) * frac, lr)
        return ops.maximum(lr, self.minimum)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "kind": self.kind,
                "decay_steps": self.decay_steps, "minimum": self.minimum}


def make_schedule(cfg: TrainConfig, total_steps: int | None = None) -> WarmupSchedule:
    """The configured schedule. ``decay_steps: 0`` decays over the rest of training,
    which needs ``total_steps`` (epochs x batches per epoch)."""
    decay_steps = cfg.decay_steps
    if decay_steps == 0:
        decay_steps = max(1, (total_steps or 1) - cfg.warmup_steps)
    return WarmupSchedule(cfg.learning_rate, cfg.warmup_steps, cfg.lr_schedule,
                          decay_steps, cfg.min_learning_rate)


def compile_model(model: Seq2Seq, cfg: TrainConfig, total_steps: int | None = None) -> None:
    """Adam + schedule (:func:`make_schedule`) + loss."""
    optimizer = keras.optimizers.Adam(
        learning_rate=make_schedule(cfg, total_steps),
        global_clipnorm=cfg.clip_norm if cfg.clip_norm > 0 else None,
    )
    model.compile(
        optimizer=optimizer,
        loss=SmoothedCrossEntropy(cfg.label_smoothing),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        jit_compile=cfg.jit_compile,
    )


# ----------------------------------------------------------------------------- callback


class Progress(Protocol):
    """What a caller (the CLI) may show while training: a bar per epoch, for instance."""

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None: ...

    def batch_end(self, logs: dict[str, Any]) -> None: ...

    def dev_begin(self) -> None: ...

    def epoch_end(self) -> None: ...


class EpochEnd(keras.callbacks.Callback):
    """Dev BLEU, checkpoints, early stopping, metrics.jsonl and TensorBoard scalars."""

    def __init__(self, paths: RunPaths, cfg: Config, translator: Translator, dev: Pairs | None,
                 target_tokens: int, state: dict[str, Any], report: Callable[[str], None],
                 on_record: Callable[[dict[str, Any]], None], steps: int,
                 progress: Progress | None = None):
        super().__init__()
        self.on_record = on_record
        self.steps = steps
        self.progress = progress
        self.paths = paths
        self.cfg = cfg
        self.translator = translator
        self.dev = dev
        self.target_tokens = target_tokens
        self.state = state
        self.report = report
        self.writer = tf.summary.create_file_writer(str(paths.logs))
        self._start = self._train_end = 0.0
        self.diverged: str | None = None  # where the loss or weights became non-finite

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.perf_counter()
        self._train_end = 0.0
        if self.progress is not None:
            self.progress.epoch_begin(epoch + 1, self.cfg.train.epochs, self.steps)

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is not None:
            self.progress.batch_end(logs or {})
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.diverged = (f"the training loss became {float(loss)} in epoch "
                             f"{self._epoch + 1}, batch {batch + 1} (optimizer step {step})")
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        if not self._train_end:
            self._train_end = time.perf_counter()
        if self.progress is not None:
            self.progress.dev_begin()

    def dev_bleu(self) -> float | None:
        if self.dev is None or not len(self.dev):
            return None
        n = self.cfg.train.dev_bleu_sentences or len(self.dev)
        hyps = self.translator.translate(self.dev.src[:n], beam_size=1)
        tokenize, _ = bleu_tokenizer(self.cfg.data.tgt_lang)
        return round(bleu([h.text for h in hyps], self.dev.tgt[:n], tokenize=tokenize), 2)

    def on_epoch_end(self, epoch, logs=None):
        try:
            self._epoch_end(epoch, logs if logs is not None else {})
        finally:
            if self.progress is not None:
                self.progress.epoch_end()

    def _epoch_end(self, epoch, logs):
        if self.progress is not None:
            self.progress.dev_begin()
        if self.diverged is None and not _finite_weights(self.model):
            self.diverged = f"the weights hold NaN or Inf after epoch {epoch + 1}"
        if self.diverged is not None:  # nothing of this epoch may reach the run dir
            self.model.stop_training = True
            return
        train_seconds = (self._train_end or time.perf_counter()) - self._start
        dev_bleu = self.dev_bleu()
        seconds = time.perf_counter() - self._start
        number = epoch + 1
        lr = float(keras.ops.convert_to_numpy(
            self.model.optimizer.learning_rate))
        record = {
            "epoch": number,
            "loss": _rounded(logs.get("loss")),
            "acc": _rounded(logs.get("acc")),
            "dev_loss": _rounded(logs.get("val_loss")),
            "dev_bleu": dev_bleu,
            "learning_rate": lr,
            "seconds": round(seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "tgt_tokens_per_sec": round(self.target_tokens / max(train_seconds, 1e-9), 1),
            "optimizer_steps": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
        }
        st = self.state
        improved = dev_bleu is not None and dev_bleu > st.get("best_bleu", -1.0)
        if improved or dev_bleu is None:
            save_weights_atomic(self.model, self.paths.checkpoints / BEST_WEIGHTS)
            st["best_bleu"] = dev_bleu if dev_bleu is not None else st.get("best_bleu", -1.0)
            st["best_epoch"] = number
            st["bad_epochs"] = 0
        else:
            st["bad_epochs"] = st.get("bad_epochs", 0) + 1
        record["best_dev_bleu"] = st.get("best_bleu")
        # metrics first: a resume truncates lines past the checkpoint's epoch
        with open(self.paths.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        ckpt = self.paths.epoch_checkpoint(number)
        save_model_atomic(self.model, ckpt)
        st.update({"epoch": number, "last": ckpt.name,
                   "optimizer_steps": record["optimizer_steps"],
                   "train_wall_seconds": round(st.get("train_wall_seconds", 0.0) + seconds, 1)})
        write_json_atomic(self.paths.train_state, st)
        for epoch, old in self.paths.epoch_checkpoints().items():
            if epoch <= number - self.cfg.train.keep_checkpoints:
                old.unlink(missing_ok=True)
        with self.writer.as_default(step=number):
            for key in ("loss", "dev_loss", "dev_bleu", "learning_rate", "tgt_tokens_per_sec"):
                if record[key] is not None:
                    tf.summary.scalar(key, record[key])
            self.writer.flush()
        if self.progress is not None:
            self.progress.epoch_end()
        self.on_record(record)
        if st["bad_epochs"] >= self.cfg.train.patience:
            self.report(f"early stopping: no dev BLEU gain for {st['bad_epochs']} epochs "
                        f"(best {st['best_bleu']} at epoch {st['best_epoch']})")
            self.model.stop_training = True


def _rounded(value: Any) -> float | None:
    """A metric for metrics.jsonl: rounded, or None when missing or not finite (JSON has
    no NaN)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 4)


def _finite_weights(model: keras.Model) -> bool:
    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights
               if "float" in str(w.dtype))


def save_model_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")  # Keras wants the .keras suffix
    model.save(tmp)
    os.replace(tmp, path)


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")  # ends with .weights.h5 as Keras requires
    model.save_weights(tmp)
    os.replace(tmp, path)


def _truncate_metrics(path: Path, epoch: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["epoch"] <= epoch]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------- entry point


#: ``train.*`` keys a resumed run may change; they take effect for real. The others live
#: in the checkpoint (optimizer, LR schedule, loss) or shape the epochs it was trained on.
RESUMABLE_TRAIN_KEYS = ("epochs", "patience", "keep_checkpoints", "dev_bleu_sentences",
                        "jit_compile", "seed", "shuffle_buffer")


def check_resume_settings(paths: RunPaths, cfg: Config) -> int:
    """Refuse a resume whose ``train.*`` settings differ from the run's in keys that a
    resume cannot apply (:data:`RESUMABLE_TRAIN_KEYS` can change); returns the run's
    ``train.epochs`` so far. ``data``/``tokenizer``/``model`` are checked by prepare."""
    old = load_config(paths.config).train
    changed = [f"train.{f.name}" for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUMABLE_TRAIN_KEYS
               and getattr(old, f.name) != getattr(cfg.train, f.name)]
    if changed:
        raise UserError(
            f"{paths.root}: resuming with other {', '.join(changed)} than the run was trained "
            "with; its checkpoint keeps the optimizer, LR schedule and loss. Put them back, or "
            f"train a new run_dir (a resume may change train.{', train.'.join(RESUMABLE_TRAIN_KEYS)})")
    return old.epochs


def extended_schedule(tc: TrainConfig, steps_per_epoch: int) -> WarmupSchedule | None:
    """The learning-rate schedule of a resumed run whose ``train.epochs`` changed.

    Only ``linear_decay`` with ``decay_steps: 0`` depends on the number of epochs (it
    ends at the last step). It becomes the schedule the config now describes, the one a
    run started with the new ``train.epochs`` has: from the resume step on, the learning
    rate follows that decay to ``min_learning_rate`` at the end of the new last epoch (a
    finished 10-epoch run extended to 15 resumes at a third of the peak). The other
    schedules are step-based and go on unchanged (None).
    """
    if tc.lr_schedule != "linear_decay" or tc.decay_steps != 0:
        return None
    return make_schedule(tc, tc.epochs * steps_per_epoch)


def stream_seed(seed: int, initial_epoch: int) -> int:
    """The seed of the data shuffle and dropout streams of a run that starts at ``initial_epoch``.

    A fresh run uses ``train.seed``. A resumed run needs other streams: ``tf.data``
    reshuffles from its seed again in a new process, and Keras does not save a dropout
    layer's seed state in the ``.keras`` file, so reusing the seed would replay the batch
    order and dropout masks of epochs 1, 2, ... A different seed per resume epoch avoids
    that and keeps a resumed run reproducible for the same interruption point.
    """
    if initial_epoch == 0:
        return seed
    return (seed * 1_000_003 + initial_epoch) % 2**31


def train(
    cfg: Config,
    data_root: Path,
    report: Callable[[str], None] = log.info,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    step: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Train ``cfg`` (preparing the run dir first if needed); returns a summary.

    ``report`` gets messages, ``on_record`` each epoch's record (the line written to
    ``metrics.jsonl``; default: ``report`` it as JSON), ``progress`` the batches.
    """
    if on_record is None:
        def on_record(record: dict[str, Any]) -> None:
            report(json.dumps(record))
    paths = ensure_prepared(cfg, data_root, step)
    tc = cfg.train
    state: dict[str, Any] = {}
    if paths.train_state.is_file():
        state = json.loads(paths.train_state.read_text(encoding="utf-8"))
    initial_epoch = int(state.get("epoch", 0))
    trained_epochs = tc.epochs
    if initial_epoch:
        trained_epochs = check_resume_settings(paths, cfg)
    write_text_atomic(paths.config, dump_config(cfg))  # what this run uses from now on
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    seed = stream_seed(tc.seed, initial_epoch)
    keras.utils.set_random_seed(seed)
    if tc.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    tokenizers = Tokenizers.load(paths.root)
    train_ids, dropped, target_tokens, lengths = filter_by_length(
        read_prepared_split(paths, "train"), tokenizers, tc.max_len)
    if dropped:
        report(f"train: {dropped} pairs longer than train.max_len={tc.max_len} subwords skipped")
    dev = read_prepared_split(paths, "dev")
    dev_ds = None
    if dev is not None and len(dev):
        dev_ids, dev_dropped, _, dev_lengths = filter_by_length(dev, tokenizers, tc.max_len)
        if dev_dropped:
            report(f"dev loss: {dev_dropped} pairs longer than {tc.max_len} subwords left out "
                   "(dev BLEU uses all)")
        dev_ds = make_dataset(dev_ids, max_len=tc.max_len,
                              batch_tokens=tc.batch_tokens, shuffle=False,
                              pad_to_bucket_boundary=tc.jit_compile, lengths=dev_lengths)
    train_ds = make_dataset(
        train_ids, max_len=tc.max_len, batch_tokens=tc.batch_tokens,
        shuffle=True, seed=seed, shuffle_buffer=tc.shuffle_buffer, bucketing=tc.bucketing,
        fixed_batch_size=tc.fixed_batch_size, pad_to_bucket_boundary=tc.jit_compile,
        lengths=lengths,
    )
    steps_per_epoch = int(train_ds.cardinality())
    if initial_epoch:
        model = keras.saving.load_model(paths.checkpoints / state["last"])
        if model.jit_compile != tc.jit_compile:
            model.jit_compile = tc.jit_compile
        _truncate_metrics(paths.metrics, initial_epoch)
        report(f"resuming from {state['last']} (epoch {initial_epoch}, "
               f"optimizer step {int(model.optimizer.iterations.numpy())}; "
               f"shuffle and dropout reseeded with {seed})")
        if trained_epochs != tc.epochs:
            schedule = extended_schedule(tc, steps_per_epoch)
            if schedule is not None:
                model.optimizer.learning_rate = schedule
                lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
                report(f"train.epochs {trained_epochs} -> {tc.epochs}: the learning rate now "
                       f"decays linearly to {tc.min_learning_rate:g} at the end of epoch "
                       f"{tc.epochs}; it is {lr:.3g} at optimizer step "
                       f"{int(model.optimizer.iterations.numpy())}")
    else:
        model = build_model(cfg.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)
        compile_model(model, tc, total_steps=tc.epochs * steps_per_epoch)
        if paths.metrics.exists():
            paths.metrics.unlink()
    report(f"model: {model.count_params():,} parameters; train pairs {len(train_ids):,} "
           f"in {steps_per_epoch:,} batches, dev pairs {len(dev) if dev else 0:,}")
    if initial_epoch >= tc.epochs or state.get("bad_epochs", 0) >= tc.patience:
        report(f"nothing to do: finished at epoch {initial_epoch} "
               f"(best dev BLEU {state.get('best_bleu')} at epoch {state.get('best_epoch')})")
    else:
        translator = Translator(model, tokenizers, cfg.decode)
        callback = EpochEnd(paths, cfg, translator, dev, target_tokens, state, report,
                            on_record, steps_per_epoch, progress)
        # shuffle=False: the tf.data pipeline shuffles itself, seeded
        model.fit(train_ds, validation_data=dev_ds, epochs=tc.epochs, shuffle=False,
                  initial_epoch=initial_epoch, callbacks=[callback], verbose=0)
        if callback.diverged is not None:
            if "last" in state:
                where = (f"the last good checkpoint is {paths.checkpoints / state['last']} "
                         f"(epoch {state['epoch']}): re-running the same command resumes from it")
            else:
                where = "no epoch had finished: re-running the same command starts over"
            raise RunError(f"{paths.root}: training diverged: {callback.diverged}; nothing of "
                           f"that epoch was saved, {where}. If it diverges again, train a new "
                           "run_dir with a lower train.learning_rate or train.clip_norm > 0")
    return {"run_dir": str(paths.root), "parameters": model.count_params(), "seed": seed,
            "epochs": tc.epochs, **state}
