"""``download``: fetch a public corpus, verify it by sha256 and lay it out for the configs.

Layouts match what ``configs/*.yaml`` expect under the data root:

- ``spa-eng/``: ``spa.txt`` plus the fixed split ``{train,dev,test}.{en,es}``, leak-free in
  both directions: pairs that share their English OR their Spanish sentence (exact string)
  form one group (connected components over both sides), and a whole group goes to test
  when ``int(sha256(k)[:8], 16) % 1000 < 20``, to dev when ``< 40``, else to train, where
  ``k`` is the group's smallest English sentence in code-point order (hash over its UTF-8
  bytes). Lines keep the order of ``spa.txt``; the sentences are its first two columns,
  unchanged. This reproduces ``shared/data/spa-eng`` (train 114,144 / dev 2,470 /
  test 2,350). An earlier version grouped by English only and leaked Spanish test
  sentences into train.
- ``multi30k/``: ``{train,val,test2016}.{en,de,fr,cs}`` (task 1 raw text).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from translator.corpus import decode_lines, sentence_groups
from translator.errors import UserError
from translator.fileio import write_bytes_atomic, write_lines_atomic


class DownloadError(UserError):
    """The corpus could not be fetched or failed verification."""


@dataclass(frozen=True)
class Remote:
    """One file to fetch: ``sha256`` is of the downloaded bytes, or, with ``gunzip``,
    of the decompressed content; it is written to ``target`` (relative to the dest)."""

    url: str
    sha256: str
    target: str
    gunzip: bool = False
    zip_member: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[Remote, ...]
    finish: Callable[[Path], None] | None = field(default=None, compare=False)


def spa_eng_split(folder: Path) -> None:
    """Write the fixed train/dev/test split of ``spa.txt``, leak-free in both directions.

    Pairs that share their English or their Spanish sentence form one group
    (:func:`translator.corpus.sentence_groups`); the group's bucket is the hash of its
    smallest English sentence (see the module docstring). The sentences are written as
    they are in ``spa.txt`` (columns 1 and 2, not normalized), in its line order.
    """
    path = folder / "spa.txt"
    en, es = [], []
    for number, line in enumerate(decode_lines(path.read_bytes(), str(path)), start=1):
        cols = line.rstrip("\r").split("\t")
        if len(cols) < 2:
            raise DownloadError(f"{path}:{number}: expected English<TAB>Spanish")
        en.append(cols[0])
        es.append(cols[1])
    bucket_of = [""] * len(en)
    for group in sentence_groups(en, es):
        key = min(en[i] for i in group)
        bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 1000
        name = "test" if bucket < 20 else "dev" if bucket < 40 else "train"
        for i in group:
            bucket_of[i] = name
    for name in ("train", "dev", "test"):
        idx = [i for i, b in enumerate(bucket_of) if b == name]
        write_lines_atomic(folder / f"{name}.en", [en[i] for i in idx])
        write_lines_atomic(folder / f"{name}.es", [es[i] for i in idx])


_M30K = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
_M30K_SHA = {  # sha256 of the decompressed files (see the dataset's README)
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "val.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "test2016.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test2016.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test2016.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "test2016.cs": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
}
_M30K_REMOTE_NAME = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}

DATASETS: dict[str, Dataset] = {
    "spa-eng": Dataset(
        "spa-eng",
        (
            Remote(
                "http://storage.googleapis.com/download.tensorflow.org/data/spa-eng.zip",
                "0c4fd7825d3d872488d38c157f784e035edab4f2ff0df25a2a208790ecb5b58f",
                "spa-eng/spa.txt",
                zip_member="spa-eng/spa.txt",
            ),
        ),
        finish=lambda dest: spa_eng_split(dest / "spa-eng"),
    ),
    "multi30k": Dataset(
        "multi30k",
        tuple(
            Remote(
                f"{_M30K}{_M30K_REMOTE_NAME[name.split('.')[0]]}.{name.split('.')[1]}.gz",
                sha,
                f"multi30k/{name}",
                gunzip=True,
            )
            for name, sha in _M30K_SHA.items()
        ),
    ),
}


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {url} ({reason}); check the internet connection, "
            "or copy the files by hand (layout in data/README.md)"
        ) from None


def download(
    name: str,
    dest: Path,
    datasets: dict[str, Dataset] | None = None,
    timeout: float = 60.0,
    step: Callable[[str], None] = lambda msg: None,
) -> list[Path]:
    """Fetch dataset ``name`` into ``dest``; returns the files written."""
    datasets = DATASETS if datasets is None else datasets
    if name not in datasets:
        raise DownloadError(f"unknown dataset {name!r}; available: {', '.join(sorted(datasets))}")
    dataset = datasets[name]
    written = []
    for remote in dataset.files:
        step(f"fetching {remote.url}")
        data = _fetch(remote.url, timeout)
        if remote.gunzip:
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise DownloadError(f"{remote.url}: not a gzip file ({exc})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != remote.sha256:
            raise DownloadError(
                f"{remote.url}: sha256 {digest} does not match the expected {remote.sha256}; "
                "the file is corrupt or has changed, nothing was written"
            )
        if remote.zip_member is not None:
            try:
                data = zipfile.ZipFile(io.BytesIO(data)).read(remote.zip_member)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise DownloadError(f"{remote.url}: cannot extract {remote.zip_member} ({exc})") from None
        target = dest / remote.target
        write_bytes_atomic(target, data)
        written.append(target)
    if dataset.finish is not None:
        step("writing the split")
        dataset.finish(dest)
    return written
