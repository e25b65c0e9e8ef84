"""Make ``data/sample/``, the quickstart corpus, from the fixed spa-eng split.

    python scripts/make_sample.py --data-root ../shared/data [--train 40000]

Takes a seeded random sample of each split's pairs (kept in corpus order: spa.txt is
sorted by length, so the first lines would be the shortest), and writes them gzip-compressed
(``{train,dev,test}.{es,en}.gz``, mtime 0, so the bytes are reproducible). Prints one JSON
line per file with its pairs, bytes and the sha256 of the decompressed text.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--dest", default="data/sample")
    p.add_argument("--train", type=int, default=40_000)
    p.add_argument("--dev", type=int, default=500)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args()

    from translator.corpus import read_lines

    src = Path(args.data_root) / "spa-eng"
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train), ("dev", args.dev), ("test", args.test)):
        es, en = read_lines(src / f"{split}.es"), read_lines(src / f"{split}.en")
        keep = sorted(random.Random(args.seed).sample(range(len(es)), min(n, len(es))))
        for lang, lines in (("es", es), ("en", en)):
            text = "".join(lines[i] + "\n" for i in keep).encode("utf-8")
            path = dest / f"{split}.{lang}.gz"
            with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                        mtime=0, compresslevel=9) as f:
                f.write(text)
            print(json.dumps({"file": str(path), "pairs": len(keep), "bytes": path.stat().st_size,
                              "sha256_gz": hashlib.sha256(path.read_bytes()).hexdigest(),
                              "sha256_text": hashlib.sha256(text).hexdigest()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
