"""Shared fixtures: synthetic corpora made on the fly, a tiny trained run, CLI runner."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRANSLATOR_DATA_ROOT", REPO.parent / "shared" / "data"))
#: Why a test that reads the real corpora is skipped on a machine without them.
NO_SHARED_DATA = (f"needs the real corpora in {SHARED_DATA} (../shared/data beside the repo, "
                  "or set TRANSLATOR_DATA_ROOT)")

# A toy language pair: "source" words map one-to-one to "target" words, order reversed.
LEXICON = {
    "der": "the", "hund": "dog", "katze": "cat", "sieht": "sees", "mag": "likes",
    "rote": "red", "kleine": "small", "mann": "man", "frau": "woman", "ball": "ball",
    "spielt": "plays", "mit": "with", "im": "in the", "park": "park", "garten": "garden",
}


def toy_pairs(n: int, seed: int = 0, min_words: int = 2, max_words: int = 6):
    rng = random.Random(seed)
    words = sorted(LEXICON)
    src, tgt = [], []
    while len(src) < n:
        sent = [rng.choice(words) for _ in range(rng.randint(min_words, max_words))]
        s = " ".join(sent)
        if s in src:
            continue
        src.append(s)
        tgt.append(" ".join(LEXICON[w] for w in reversed(sent)))
    return src, tgt


def write_aligned(folder: Path, name: str, src, tgt, sl="xx", tl="yy") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.{sl}").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (folder / f"{name}.{tl}").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def toy_config(run_dir: Path, **sections) -> dict:
    cfg = {
        "run_dir": str(run_dir),
        "data": {"src_lang": "xx", "tgt_lang": "yy", "train": "toy/train", "dev": "toy/dev",
                 "test_size": 0},
        "tokenizer": {"vocab_size": 60},
        "model": {"embed_dim": 32, "hidden_size": 64, "dropout": 0.0, "embed_dropout": 0.0},
        "train": {"epochs": 60, "batch_tokens": 512, "max_len": 20, "learning_rate": 0.01,
                  "warmup_steps": 0, "label_smoothing": 0.0, "patience": 100},
        "decode": {"beam_size": 1, "batch_size": 8},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture(scope="session")
def memorized_run(tmp_path_factory):
    """A tiny model trained to memorize 20 toy pairs (train == dev)."""
    from translator.cli import main

    root = tmp_path_factory.mktemp("memorize")
    src, tgt = toy_pairs(20, seed=1)
    write_aligned(root / "data" / "toy", "train", src, tgt)
    write_aligned(root / "data" / "toy", "dev", src, tgt)
    cfg = write_config(root / "cfg.yaml", toy_config(root / "run"))
    assert main(["-q", "train", str(cfg), "--data-root", str(root / "data")]) == 0
    return {"run_dir": root / "run", "src": src, "tgt": tgt, "root": root}


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from translator.cli import main

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
