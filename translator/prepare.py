"""``prepare``: read, clean and split the corpus, train the tokenizer, fill the run dir.

The run dir then holds ``config.yaml``, ``corpus/{train,dev,test}.{src,tgt}``, the
SentencePiece model(s) and ``prepare.json`` (the statistics). No TensorFlow here.

Prepare owns exactly those entries (:data:`PREPARED`) and replaces them as a whole: the new
state is built in a staging dir ``RUN_DIR/.prepare-XXXX/`` and swapped in, so nothing of an
earlier prepare survives (a ``corpus/dev.*`` that the new config does not split off, a joint
``spm.model`` after ``tokenizer.joint: false``). The swap first removes ``config.yaml``, the
file :meth:`RunPaths.is_prepared` needs, and renames the new one in last, so a prepare that
dies half way leaves a run dir that is not prepared (``train`` then prepares it again), never
a mix of old and new. What a train that stopped before its first checkpoint left behind
(:data:`TRAIN_LEFTOVERS`: metrics, TensorBoard logs, evaluation output) describes the old
data and tokenizer, so it goes too, with a warning; any other file in the run dir is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from translator.config import Config, config_to_dict, dump_config
from translator.corpus import CLEANING_RULES, CorpusError, Pairs, load_corpus, read_lines
from translator.errors import UserError
from translator.fileio import write_json_atomic, write_lines_atomic, write_text_atomic
from translator.tokenizer import (
    JOINT_FILE,
    SRC_FILE,
    TGT_FILE,
    UNK_ID,
    Tokenizers,
    train_tokenizers,
)

log = logging.getLogger(__name__)

CORPUS_DIR = "corpus"
CONFIG_FILE = "config.yaml"
STATS_FILE = "prepare.json"
STATE_FILE = "state.json"
LOCK_FILE = "train.lock"
SPLITS = ("train", "dev", "test")
STAGING_PREFIX = ".prepare-"
#: What ``prepare`` writes; ``config.yaml`` (what marks a run dir as prepared) comes last.
PREPARED = (STATS_FILE, JOINT_FILE, SRC_FILE, TGT_FILE, CORPUS_DIR, CONFIG_FILE)
#: What a train or evaluate of the previous preparation leaves without checkpoints.
TRAIN_LEFTOVERS = ("metrics.jsonl", "logs", "eval")

Step = Callable[[str], None]


@dataclass
class RunPaths:
    """Where everything lives inside a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def stats(self) -> Path:
        return self.root / STATS_FILE

    def split(self, name: str) -> tuple[Path, Path]:
        return (self.root / CORPUS_DIR / f"{name}.src", self.root / CORPUS_DIR / f"{name}.tgt")

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def train_state(self) -> Path:
        """Training progress (last epoch, best dev BLEU, ...), written after every epoch."""
        return self.checkpoints / STATE_FILE

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch}.keras"

    def epoch_checkpoints(self) -> dict[int, Path]:
        """The ``epoch-N.keras`` files present, by epoch number, oldest first."""
        found = {}
        if self.checkpoints.is_dir():
            for path in self.checkpoints.glob("epoch-*.keras"):
                number = path.name.removeprefix("epoch-").removesuffix(".keras")
                if number.isdigit():
                    found[int(number)] = path
        return dict(sorted(found.items()))

    @property
    def lock(self) -> Path:
        """Held (``flock``) by the ``train`` or ``prepare`` running on this run dir; holds
        its pid and action."""
        return self.root / LOCK_FILE

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def is_prepared(self) -> bool:
        return (
            self.config.is_file()
            and self.stats.is_file()
            and Tokenizers.exists(self.root)
            and all(p.is_file() for p in self.split("train"))
        )


def read_prepared_split(paths: RunPaths, name: str) -> Pairs | None:
    """A split written by ``prepare``, or None when the run has no such split."""
    src, tgt = paths.split(name)
    if not src.is_file():
        return None
    return Pairs(read_lines(src), read_lines(tgt))


def _mean_len(ids: list[list[int]]) -> float:
    return round(sum(map(len, ids)) / max(1, len(ids)), 2)


def _unk_rate(ids: list[list[int]]) -> float:
    total = sum(map(len, ids))
    unk = sum(seq.count(UNK_ID) for seq in ids)
    return round(100.0 * unk / max(1, total), 3)


#: ``tokenizer.*`` keys that only shape training batches, not the prepared files: a run
#: dir prepared with other values (or before they existed) is the same preparation.
TRAINING_ONLY_TOKENIZER_KEYS = ("sample_alpha", "sample_nbest")


def _with_defaults(section: Any, saved: Any) -> dict[str, Any]:
    """A run's saved config ``section`` with the keys it lacks (keys added to the package
    after it was written) at their defaults, which keep the behaviour of before."""
    merged: dict[str, Any] = {}
    for field in dataclasses.fields(section):
        if field.default is not dataclasses.MISSING:
            merged[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            merged[field.name] = field.default_factory()
    return {**merged, **(saved if isinstance(saved, dict) else {})}


def check_same_setup(paths: RunPaths, cfg: Config) -> None:
    """Refuse to mix a run dir with a config whose data/tokenizer/model differ
    (:data:`TRAINING_ONLY_TOKENIZER_KEYS` aside). A key the run's saved config lacks (it
    was written before the key existed) counts as its default."""
    import yaml

    old = yaml.safe_load(paths.config.read_text(encoding="utf-8")) or {}
    new = config_to_dict(cfg)
    if isinstance(old, dict):
        old = {**old, **{section: _with_defaults(getattr(cfg, section), old.get(section))
                         for section in ("data", "tokenizer", "model")}}
    for key in TRAINING_ONLY_TOKENIZER_KEYS:
        if isinstance(old.get("tokenizer"), dict):
            old["tokenizer"].pop(key, None)
        new["tokenizer"].pop(key, None)
    for section in ("data", "tokenizer", "model"):
        if old.get(section) != new[section]:
            changed = sorted(
                k for k in new[section]
                if (old.get(section) or {}).get(k) != new[section][k]
            )
            raise UserError(
                f"{paths.config}: the run dir was prepared with different {section} settings "
                f"({', '.join(f'{section}.{k}' for k in changed)}); "
                "use a new run_dir or the same config"
            )


def prepare(cfg: Config, data_root: Path, step: Step = lambda name: None) -> dict[str, Any]:
    """Prepare ``cfg.run_dir`` from the corpus under ``data_root``; return statistics.

    Replaces everything an earlier prepare wrote (see the module docstring).
    """
    paths = RunPaths(Path(cfg.run_dir))
    if paths.root.exists() and not paths.root.is_dir():
        raise UserError(f"{paths.root}: run_dir is not a directory")
    if paths.checkpoints.exists() and any(paths.checkpoints.iterdir()):
        raise UserError(
            f"{paths.root}: has checkpoints already; re-preparing would change its tokenizer. "
            "Use a new run_dir (--set run_dir=...)"
        )
    step("reading and cleaning the corpus")
    corpus = load_corpus(cfg.data, data_root)
    step("training the SentencePiece tokenizer")
    tokenizers = train_tokenizers(corpus.train.src, corpus.train.tgt, cfg.tokenizer)
    step("computing statistics")
    report = corpus.report
    stats: dict[str, Any] = {
        "data_root": str(data_root),
        "pairs_read": report.read,
        "pairs_not_used_max_pairs": report.not_used,
        "dropped": {rule: report.dropped.get(rule, 0) for rule in CLEANING_RULES},
        "split_off": report.split_off,
        "pairs": {
            name: (len(p) if p is not None else 0)
            for name, p in (("train", corpus.train), ("dev", corpus.dev), ("test", corpus.test))
        },
        "vocab_size": {"src": tokenizers.src.vocab_size, "tgt": tokenizers.tgt.vocab_size},
        "joint_vocab": tokenizers.joint,
    }
    train_src = tokenizers.src.encode(corpus.train.src)
    train_tgt = tokenizers.tgt.encode(corpus.train.tgt)
    stats["mean_subwords"] = {"src": _mean_len(train_src), "tgt": _mean_len(train_tgt)}
    too_long = sum(
        1 for s, t in zip(train_src, train_tgt, strict=True)
        if len(s) > cfg.train.max_len or len(t) > cfg.train.max_len
    )
    stats["train_over_max_len_subwords"] = too_long
    if corpus.dev is not None and len(corpus.dev):
        stats["dev_unk_rate_percent"] = {
            "src": _unk_rate(tokenizers.src.encode(corpus.dev.src)),
            "tgt": _unk_rate(tokenizers.tgt.encode(corpus.dev.tgt)),
        }
    step("writing the run dir")
    paths.root.mkdir(parents=True, exist_ok=True)
    for stale in paths.root.glob(f"{STAGING_PREFIX}*"):  # of a prepare that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=paths.root))
    try:
        new = RunPaths(staging)
        tokenizers.save(staging)
        for name, pairs in (("train", corpus.train), ("dev", corpus.dev), ("test", corpus.test)):
            if pairs is not None:
                src_path, tgt_path = new.split(name)
                write_lines_atomic(src_path, pairs.src)
                write_lines_atomic(tgt_path, pairs.tgt)
        write_json_atomic(new.stats, stats)
        write_text_atomic(new.config, dump_config(cfg))
        _swap_in(paths.root, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def _swap_in(root: Path, staging: Path) -> None:
    """Replace the prepared entries of ``root`` by those in ``staging`` (same filesystem).

    Every step is one rename. ``config.yaml`` goes first and comes back last, so between
    the two ``root`` is not prepared; the old entries are moved into ``staging/.old``,
    which the caller removes.
    """
    old = staging / ".old"
    old.mkdir()
    (root / CONFIG_FILE).unlink(missing_ok=True)
    leftovers = [name for name in TRAIN_LEFTOVERS if os.path.lexists(root / name)]
    if leftovers:
        log.warning("%s: removed %s of an earlier training on the replaced preparation",
                    root, ", ".join(leftovers))
    for name in (*PREPARED, *leftovers):
        if os.path.lexists(root / name):
            os.replace(root / name, old / name)
    for name in PREPARED:
        if os.path.lexists(staging / name):
            os.replace(staging / name, root / name)


def ensure_prepared(cfg: Config, data_root: Path, step: Step = lambda name: None) -> RunPaths:
    """Prepare the run dir unless it already is (then check it matches ``cfg``)."""
    paths = RunPaths(Path(cfg.run_dir))
    if paths.is_prepared():
        check_same_setup(paths, cfg)
        return paths
    if not data_root.is_dir():
        raise CorpusError(
            f"{data_root}: data root not found; pass --data-root DIR or set TRANSLATOR_DATA_ROOT"
        )
    prepare(cfg, data_root, step)
    return paths
