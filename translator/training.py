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

Hard knocks: one ``train`` at a time holds ``RUN_DIR/train.lock`` (``flock``, so the lock of
a killed process is free again and is taken over). A checkpoint is built in memory and
written to ``.tmp-NAME`` then renamed, so a kill, Ctrl-C or full disk during the write
leaves the previous file and ``state.json`` as they were (the next ``train`` removes such
leftovers); a failed write is one line (:class:`CheckpointWriteError`). A resume whose
newest checkpoint does not load falls back to the previous kept one, with a warning.
Checkpoints load with ``safe_mode=True``: one that holds Python code is refused.

Several processes or GPUs (``train.distribute``): :func:`train` hands over to
:mod:`translator.distributed`, which reuses this module's loss, optimizer, :class:`EpochEnd`
and checkpoint files around a ``tf.distribute`` loop of its own.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import io
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from translator.config import Config, TrainConfig, dump_config, load_config
from translator.corpus import Pairs
from translator.errors import Interrupted, RunError, UserError
from translator.fileio import write_json_atomic, write_text_atomic
from translator.hardware import cpu_has_native_bfloat16
from translator.metrics import bleu, bleu_tokenizer
from translator.model import Seq2Seq, build_model
from translator.pipeline import SubwordSampler, filter_by_length, make_dataset
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
        # one fused op for the loss and its gradient (softmax - q): a log_softmax with a
        # gather of the target column back-propagates through a slow UnsortedSegmentSum
        logits = tf.cast(y_pred, tf.float32)
        vocab = tf.shape(logits)[-1]
        off = self.label_smoothing / tf.cast(vocab, tf.float32)
        q = tf.one_hot(tf.cast(y_true, tf.int32), vocab,
                       on_value=1.0 - self.label_smoothing + off, off_value=off)
        return tf.nn.softmax_cross_entropy_with_logits(labels=q, logits=logits)

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


class CtrlC:
    """A Ctrl-C that cannot be lost.

    Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. If
    that is a weakref callback or ``__del__`` run by the garbage collector (TensorFlow makes
    many: ``WeakKeyDictionary.remove``), the exception is "ignored" (printed and dropped) and
    training went on as if nothing was pressed: 4 of 205 Ctrl-Cs at random moments of a toy
    run. While :meth:`watching` runs, SIGINT also sets :attr:`pressed`; :meth:`check`
    raises ``KeyboardInterrupt`` again, and the dropped one is not printed
    (``sys.unraisablehook``). It is called at every training batch, at every epoch's begin
    and end, at dev-loss batches in the Keras loop, and when the block ends."""

    def __init__(self) -> None:
        self.pressed = False

    def _handler(self, signum, frame):
        self.pressed = True
        raise KeyboardInterrupt

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Installs the handler for the block, only over Python's own one in the main thread:
        an ignored SIGINT (a background job's) stays ignored, a caller's handler stays."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return
        hook = sys.unraisablehook

        def unraisable(info: Any) -> None:
            if not (self.pressed and isinstance(info.exc_value, KeyboardInterrupt)):
                hook(info)  # a dropped Ctrl-C is raised again by check(): not worth a traceback

        try:  # installed inside the try: a Ctrl-C right after still restores both
            sys.unraisablehook = unraisable
            signal.signal(signal.SIGINT, self._handler)
            yield
            self.check()  # one dropped after the last boundary (the last epoch's writes)
        finally:
            sys.unraisablehook = hook
            signal.signal(signal.SIGINT, signal.default_int_handler)  # what it was (above)

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


class EpochEnd(keras.callbacks.Callback):
    """Dev BLEU, checkpoints, early stopping, metrics.jsonl and TensorBoard scalars."""

    def __init__(self, paths: RunPaths, cfg: Config, translator: Translator, dev: Pairs | None,
                 target_tokens: int, state: dict[str, Any], report: Callable[[str], None],
                 on_record: Callable[[dict[str, Any]], None], steps: int,
                 progress: Progress | None = None, sampler: SubwordSampler | None = None):
        super().__init__()
        self.sampler = sampler
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
        self._epoch = int(state.get("epoch", 0))  # 0-based, as Keras counts
        self.diverged: str | None = None  # where the loss or weights became non-finite
        self.ctrl_c = CtrlC()  # the training loop runs under self.ctrl_c.watching()

    def on_epoch_begin(self, epoch, logs=None):
        self.ctrl_c.check()
        self._epoch = epoch
        self._start = time.perf_counter()
        self._train_end = 0.0
        if self.progress is not None:
            self.progress.epoch_begin(epoch + 1, self.cfg.train.epochs, self.steps)

    def on_train_batch_end(self, batch, logs=None):
        self.ctrl_c.check()
        if self.progress is not None:
            self.progress.batch_end(logs or {})
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.diverged = (f"the training loss became {float(loss)} in epoch "
                             f"{self._epoch + 1}, batch {batch + 1} (optimizer step {step})")
            self.model.stop_training = True

    def on_test_batch_end(self, batch, logs=None):
        self.ctrl_c.check()

    def on_test_begin(self, logs=None):
        self.ctrl_c.check()
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
        self.ctrl_c.check()
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
        if self.sampler is not None:  # sampled sides too long: deterministic ids instead
            record["sampled_over_max_len"] = self.sampler.take_fallbacks()
        st = self.state
        archive = keras_archive(self.model)  # the epoch's checkpoint, built in memory once
        improved = dev_bleu is not None and dev_bleu > st.get("best_bleu", -1.0)
        if improved or dev_bleu is None:
            write_checkpoint(self.paths.checkpoints / BEST_WEIGHTS, weights_of_archive(archive))
            st["best_bleu"] = dev_bleu if dev_bleu is not None else st.get("best_bleu", -1.0)
            st["best_epoch"] = number
            st["bad_epochs"] = 0
        else:
            st["bad_epochs"] = st.get("bad_epochs", 0) + 1
        record["best_dev_bleu"] = st.get("best_bleu")
        # metrics first: a resume truncates lines past the checkpoint's epoch
        _append_line(self.paths.metrics, json.dumps(record, allow_nan=False))
        ckpt = self.paths.epoch_checkpoint(number)
        write_checkpoint(ckpt, archive)
        st.update({"epoch": number, "last": ckpt.name,
                   "optimizer_steps": record["optimizer_steps"],
                   "train_wall_seconds": round(st.get("train_wall_seconds", 0.0) + seconds, 1)})
        try:
            write_json_atomic(self.paths.train_state, st)
        except OSError as exc:
            raise CheckpointWriteError(self.paths.train_state, exc) from exc
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


# ----------------------------------------------------------------------------- checkpoint files

#: Prefix of the temp file a checkpoint is written to before the rename.
TMP_PREFIX = ".tmp-"
#: Test hook: while writing the checkpoint of this name (e.g. ``epoch-2.keras``), pause after
#: the temp file is written and before the rename, after creating the file named by
#: :data:`PAUSE_MARKER_ENV`; tests kill the process there.
PAUSE_IN_SAVE_ENV = "TRANSLATOR_TEST_PAUSE_IN_SAVE"
PAUSE_MARKER_ENV = "TRANSLATOR_TEST_PAUSE_MARKER"
#: The errors that more disk space (or a higher file size limit) cures.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class CheckpointWriteError(RunError):
    """A checkpoint (or ``state.json``, ``metrics.jsonl``) could not be written."""

    def __init__(self, path: Path, exc: OSError):
        self.path = path
        self.reason = exc.strerror or str(exc)
        self.no_space = exc.errno in NO_SPACE_ERRNOS
        super().__init__(f"cannot write {path}: {self.reason}")


def keras_archive(model: keras.Model) -> bytes:
    """The ``.keras`` file of ``model`` (config, weights, optimizer state), built in memory.

    Built in memory so that only :func:`write_checkpoint` touches the disk: h5py writing
    straight to a full disk (ENOSPC, EFBIG) prints errors from its destructors and crashes
    the interpreter at exit. The public ``save_model`` takes paths only, so this calls the
    saving library, which takes a file object."""
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    saving_lib.save_model(model, buffer)
    return buffer.getvalue()


def weights_of_archive(archive: bytes) -> bytes:
    """The ``.weights.h5`` file inside a ``.keras`` archive: the same HDF5 layout that
    ``model.save_weights`` writes (``load_weights`` reads both)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return zf.read("model.weights.h5")


def write_checkpoint(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: to ``.tmp-NAME`` (fsynced), then renamed.

    Whatever stops the write (a full disk, Ctrl-C) removes the temp file and leaves the
    old ``path`` as it was; an OSError becomes :class:`CheckpointWriteError`."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get(PAUSE_IN_SAVE_ENV) == path.name:
            Path(os.environ[PAUSE_MARKER_ENV]).write_text(str(tmp), encoding="utf-8")
            time.sleep(3600)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CheckpointWriteError(path, exc) from exc
        raise


def save_model_atomic(model: keras.Model, path: Path) -> None:
    write_checkpoint(path, keras_archive(model))


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    write_checkpoint(path, weights_of_archive(keras_archive(model)))


def _append_line(path: Path, line: str) -> None:
    """Append one line durably; a failed append is cut off again (no torn line)."""
    with open(path, "a", encoding="utf-8") as f:
        size = f.tell()
        try:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            f.truncate(size)
            raise CheckpointWriteError(path, exc) from exc


def remove_leftover_temps(paths: RunPaths) -> list[str]:
    """Remove the temp files that a killed ``train`` left behind (only one ``train`` runs at
    a time, see :func:`run_lock`; the names are those ``train`` writes, so the temp file of
    an ``average`` is left alone); returns them, relative to the run dir."""
    leftovers: list[Path] = []
    for folder, patterns in (
        (paths.checkpoints, (f"{TMP_PREFIX}epoch-*.keras", f"{TMP_PREFIX}{BEST_WEIGHTS}",
                             f".{paths.train_state.name}.tmp*")),  # translator.fileio's
        (paths.root, (f".{paths.config.name}.tmp*", f".{paths.metrics.name}.tmp*")),
    ):
        for pattern in patterns:
            leftovers += (p for p in folder.glob(pattern) if p.is_file())
    for path in leftovers:
        path.unlink(missing_ok=True)
    return sorted(str(p.relative_to(paths.root)) for p in leftovers)


class _Unreadable(Exception):
    """A checkpoint that cannot be loaded; the message says why."""


def load_checkpoint(path: Path) -> keras.Model:
    """Load an ``epoch-N.keras`` checkpoint with ``safe_mode=True`` (no code from the file
    runs). Raises :class:`UserError` for a file that holds Python code (a ``Lambda`` layer),
    :class:`_Unreadable` for one that is missing, truncated or corrupt."""
    try:
        if not path.is_file():
            raise _Unreadable("the file is missing")
        if not zipfile.is_zipfile(path):
            raise _Unreadable("not a complete .keras zip archive; truncated?")
        with zipfile.ZipFile(path) as zf:
            corrupt = zf.testzip()
        if corrupt is not None:
            raise _Unreadable(f"{corrupt} inside it is corrupt")
    except OSError as exc:
        raise _Unreadable(exc.strerror or str(exc)) from exc
    except zipfile.BadZipFile as exc:
        raise _Unreadable(f"not a valid .keras zip archive: {exc}") from exc
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:
        if _refused_by_safe_mode(exc):
            raise UserError(
                f"{path}: refused to load: the file holds Python code (a Lambda layer or "
                "function) that loading would run, and checkpoints load with safe_mode=True; "
                "translator never writes such files. Delete it (a resume then uses the "
                "previous checkpoint) or train a new run_dir") from None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise _Unreadable(f"{type(exc).__name__}: {first}") from exc


def _refused_by_safe_mode(exc: BaseException | None) -> bool:
    """Keras' refusal of a lambda under ``safe_mode`` (possibly wrapped by the
    deserializer of an enclosing object)."""
    while exc is not None:
        if "safe_mode" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _load_for_resume(paths: RunPaths, state: dict[str, Any], seed: int) -> keras.Model:
    """Load the checkpoint ``state`` points at or, when it cannot be loaded, the newest kept
    earlier one that can (with a warning for each that cannot). A fallback moves the
    unreadable newer files aside (``*.unreadable``) and rewinds ``state`` and
    ``state.json`` to the epoch loaded. Seeds the random streams for the resume epoch before
    loading (dropout layers draw their seeds when they are built)."""
    epoch = int(state["epoch"])
    candidates = [(epoch, paths.checkpoints / state["last"])]
    candidates += [(e, p) for e, p in reversed(paths.epoch_checkpoints().items()) if e < epoch]
    unreadable: list[tuple[Path, str]] = []
    for number, path in candidates:
        keras.utils.set_random_seed(stream_seed(seed, number))
        try:
            model = load_checkpoint(path)
        except _Unreadable as exc:
            unreadable.append((path, str(exc)))
            continue
        if unreadable:
            for bad, reason in unreadable:
                aside = bad.with_name(bad.name + ".unreadable")
                if bad.is_file():
                    os.replace(bad, aside)
                log.warning("%s: cannot load it (%s); resuming from %s instead, epoch %d is "
                            "trained again (the file is kept as %s)", bad, reason, path.name,
                            number + 1, aside.name)
            best_epoch = int(state.get("best_epoch", 0))
            state.update({"epoch": number, "last": path.name,
                          "optimizer_steps": int(model.optimizer.iterations.numpy()),
                          "bad_epochs": max(0, number - best_epoch)})
            write_json_atomic(paths.train_state, state)
        return model
    path, reason = unreadable[0]
    earlier = ("nor does any earlier one" if len(unreadable) > 1
               else "and no earlier checkpoint is kept")
    raise UserError(f"{path}: cannot load the checkpoint to resume from ({reason}), {earlier}; "
                    f"to start over, delete {paths.checkpoints}/ or train a new run_dir")


def _last_checkpoint(paths: RunPaths) -> tuple[Path, int] | None:
    """The checkpoint a re-run of the same command resumes from (as ``state.json`` on disk
    says) and its epoch; None when no epoch has one yet."""
    try:
        state = json.loads(paths.train_state.read_text(encoding="utf-8"))
        return paths.checkpoints / state["last"], int(state["epoch"])
    except (OSError, ValueError, KeyError):
        return None


@contextmanager
def run_lock(paths: RunPaths, action: str = "trained") -> Iterator[None]:
    """Hold ``RUN_DIR/train.lock`` (an exclusive ``flock``; the file holds the pid and
    ``action``) while training or preparing the run dir. A second ``train`` or ``prepare``
    on the run dir gets :class:`UserError` naming the holder. The kernel drops
    the lock of a process that dies, even by SIGKILL, so the file it leaves is stale and is
    taken over. Creates the run dir if needed (removed again if it stayed empty)."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: run_dir is not a directory")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, what = _lock_holder(fd)
            os.close(fd)
            raise UserError(
                f"{root} is being {what or 'used'} by "
                f"{f'pid {holder}' if holder else 'another process'}"
                f" (it holds {paths.lock}); wait for it to finish or stop it, then re-run the "
                f"same command{' to resume' if action == 'trained' else ''}") from None
        try:  # the file locked must still be the one at that path: a releaser unlinks it
            same = os.path.samestat(os.fstat(fd), os.stat(paths.lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        stale, _ = _lock_holder(fd, wait=0)
        if stale and stale != os.getpid():
            log.info("%s: taking over the lock of pid %d, which is gone", paths.lock, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {action}\n".encode(), 0)
        yield
    finally:
        paths.lock.unlink(missing_ok=True)
        os.close(fd)
        if created:
            try:
                root.rmdir()  # only if empty: a train refused before it wrote anything
            except OSError:
                pass


def _lock_holder(fd: int, wait: float = 1.0) -> tuple[int | None, str | None]:
    """The pid and action in a lock file; its holder may not have written them yet (wait
    that long)."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        found = re.fullmatch(r"(\d+)(?: ([a-z]+))?", text)
        if found:
            return int(found[1]), found[2]
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.05)


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
                        "jit_compile", "seed", "shuffle_buffer", "distribute",
                        "distribute_timeout")


def check_resume_settings(paths: RunPaths, cfg: Config) -> None:
    """Refuse a resume whose ``train.*`` settings differ from the run's in keys that a
    resume cannot apply (:data:`RESUMABLE_TRAIN_KEYS` can change).
    ``data``/``tokenizer``/``model`` are checked by prepare."""
    old = load_config(paths.config).train
    changed = [f"train.{f.name}" for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUMABLE_TRAIN_KEYS
               and getattr(old, f.name) != getattr(cfg.train, f.name)]
    if changed:
        raise UserError(
            f"{paths.root}: resuming with other {', '.join(changed)} than the run was trained "
            "with; its checkpoint keeps the optimizer, LR schedule and loss. Put them back, or "
            f"train a new run_dir (a resume may change train.{', train.'.join(RESUMABLE_TRAIN_KEYS)})")


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
    Holds the run dir's lock (:func:`run_lock`) throughout. Ctrl-C raises
    :class:`Interrupted`, a failed checkpoint write :class:`RunError`, both saying where a
    re-run of the same command goes on from."""
    if on_record is None:
        def on_record(record: dict[str, Any]) -> None:
            report(json.dumps(record))
    from translator.distributed import resolve_distribute

    mode = resolve_distribute(cfg.train.distribute)
    if mode != "none":  # its own loop: Keras fit fails under MultiWorkerMirroredStrategy
        from translator.distributed import train_distributed

        return train_distributed(cfg, data_root, mode, report, on_record, progress, step)
    paths = RunPaths(Path(cfg.run_dir))
    with run_lock(paths):
        removed = remove_leftover_temps(paths)
        if removed:
            report(f"removed {', '.join(removed)}: partial writes of a train that was killed")
        with precision_policy(cfg.train.mixed_precision):
            return _train(cfg, data_root, report, on_record, progress, step)


def mixed_policy(setting: bool | str) -> str:
    """The Keras dtype policy ``train.mixed_precision`` names."""
    if setting is False:
        return "float32"
    return "mixed_bfloat16" if setting == "bfloat16" else "mixed_float16"


@contextmanager
def precision_policy(setting: bool | str) -> Iterator[None]:
    """Train under the dtype policy of ``train.mixed_precision`` (float32 when it is false,
    whatever the caller's global policy); the process's global policy is put back
    afterwards. Models built or loaded inside compute in that type; their variables (and
    so every checkpoint and weights file) stay float32."""
    policy = mixed_policy(setting)
    if (policy == "mixed_bfloat16" and not tf.config.list_physical_devices("GPU")
            and cpu_has_native_bfloat16() is False):
        log.warning("train.mixed_precision=bfloat16: this CPU has no bfloat16 instructions "
                    "(avx512_bf16 / amx_bf16 / bf16), so it emulates them and may train slower "
                    "than float32; set train.mixed_precision: false if it does")
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def interrupted(paths: RunPaths, epoch: int, progress: Progress | None,
                command: str = "the same command") -> Interrupted:
    """What a Ctrl-C in epoch ``epoch`` (0-based) says: where the run can resume from."""
    if progress is not None:
        progress.epoch_end()
    last = _last_checkpoint(paths)
    where = (f"the last checkpoint is {last[0]} (epoch {last[1]}): re-running {command} "
             "resumes from it" if last else
             f"no epoch has a checkpoint yet: re-running {command} starts over")
    return Interrupted(f"interrupted in epoch {epoch + 1}; {where}")


def diverged(paths: RunPaths, state: dict[str, Any], what: str,
             command: str = "the same command") -> RunError:
    """What a non-finite loss says: nothing of the epoch was saved, where to resume."""
    if "last" in state:
        where = (f"the last good checkpoint is {paths.checkpoints / state['last']} "
                 f"(epoch {state['epoch']}): re-running {command} resumes from it")
    else:
        where = f"no epoch had finished: re-running {command} starts over"
    return RunError(f"{paths.root}: training diverged: {what}; nothing of that epoch was "
                    f"saved, {where}. If it diverges again, train a new run_dir with a lower "
                    "train.learning_rate or train.clip_norm > 0")


def require_training_pairs(kept: int, dropped: int, max_len: int) -> None:
    """Stop with one line when no training pair is within ``train.max_len``."""
    if not kept:
        raise UserError(f"train: all {dropped:,} training pairs are longer than "
                        f"train.max_len={max_len} subwords; raise train.max_len"
                        if dropped else "train: the prepared train split has no pairs")


def _train(cfg: Config, data_root: Path, report: Callable[[str], None],
           on_record: Callable[[dict[str, Any]], None], progress: Progress | None,
           step: Callable[[str], None]) -> dict[str, Any]:
    paths = ensure_prepared(cfg, data_root, step)
    tc = cfg.train
    state: dict[str, Any] = {}
    if paths.train_state.is_file():
        state = json.loads(paths.train_state.read_text(encoding="utf-8"))
    initial_epoch = int(state.get("epoch", 0))
    if initial_epoch:
        check_resume_settings(paths, cfg)
    model = None
    if initial_epoch:  # may fall back to an earlier checkpoint: initial_epoch follows it
        model = _load_for_resume(paths, state, tc.seed)
        initial_epoch = int(state["epoch"])
        if model.jit_compile != tc.jit_compile:
            model.jit_compile = tc.jit_compile
    seed = stream_seed(tc.seed, initial_epoch)
    if model is None:
        keras.utils.set_random_seed(seed)  # a resume was seeded before loading
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    tokenizers = Tokenizers.load(paths.root)
    train_ids, dropped, target_tokens, lengths = filter_by_length(
        read_prepared_split(paths, "train"), tokenizers, tc.max_len)
    require_training_pairs(len(train_ids), dropped, tc.max_len)
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
    sampler = None
    if cfg.tokenizer.sample_alpha > 0:
        sampler = SubwordSampler(tokenizers, alpha=cfg.tokenizer.sample_alpha,
                                 nbest=cfg.tokenizer.sample_nbest, max_len=tc.max_len)
        report(f"subword regularization: training sentences are segmented anew every epoch "
               f"(tokenizer.sample_alpha={cfg.tokenizer.sample_alpha:g}, "
               f"sample_nbest={cfg.tokenizer.sample_nbest}); dev and decoding stay deterministic")
    train_ds = make_dataset(
        train_ids, max_len=tc.max_len, batch_tokens=tc.batch_tokens,
        shuffle=True, seed=seed, shuffle_buffer=tc.shuffle_buffer, bucketing=tc.bucketing,
        fixed_batch_size=tc.fixed_batch_size, pad_to_bucket_boundary=tc.jit_compile,
        lengths=lengths, sampler=sampler,
    )
    steps_per_epoch = int(train_ds.cardinality())
    if model is not None:
        _truncate_metrics(paths.metrics, initial_epoch)
        report(f"resuming from {state['last']} (epoch {initial_epoch}, "
               f"optimizer step {int(model.optimizer.iterations.numpy())}; "
               f"shuffle and dropout reseeded with {seed})")
        schedule = extended_schedule(tc, steps_per_epoch)
        # the checkpoint's own schedule, not config.yaml, says what the run decays to
        loaded = model.optimizer.get_config()["learning_rate"]
        if schedule is not None and loaded.get("config") != schedule.get_config():
            model.optimizer.learning_rate = schedule
            lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            report(f"train.epochs {tc.epochs}: the learning rate now decays linearly to "
                   f"{tc.min_learning_rate:g} at the end of epoch {tc.epochs} (the checkpoint's "
                   f"decay ended at step {loaded['config']['warmup_steps'] + loaded['config']['decay_steps']}); "
                   f"it is {lr:.3g} at optimizer step {int(model.optimizer.iterations.numpy())}")
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
        write_text_atomic(paths.config, dump_config(cfg))  # what this run uses from now on
        translator = Translator(model, tokenizers, cfg.decode)
        callback = EpochEnd(paths, cfg, translator, dev, target_tokens, state, report,
                            on_record, steps_per_epoch, progress, sampler)
        try:
            with callback.ctrl_c.watching():
                # shuffle=False: the tf.data pipeline shuffles itself, seeded
                model.fit(train_ds, validation_data=dev_ds, epochs=tc.epochs, shuffle=False,
                          initial_epoch=initial_epoch, callbacks=[callback], verbose=0)
        except KeyboardInterrupt:
            raise interrupted(paths, callback._epoch, progress) from None
        except CheckpointWriteError as exc:
            what = "checkpoint " if exc.path.suffix in (".keras", ".h5") else ""
            advice = "free disk space and re-run" if exc.no_space else "re-run"
            last = _last_checkpoint(paths)
            where = (f"to resume from {last[0]} (epoch {last[1]})" if last else
                     "(no epoch has a checkpoint yet: it starts over)")
            raise RunError(f"cannot write {what}{exc.path}: {exc.reason}; {advice} the same "
                           f"command {where}") from None
        if callback.diverged is not None:
            raise diverged(paths, state, callback.diverged)
    return {"run_dir": str(paths.root), "parameters": model.count_params(), "seed": seed,
            "epochs": tc.epochs, **state}
