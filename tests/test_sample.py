"""The quickstart sample shipped in data/sample/: intact, documented, and what
configs/quickstart.yaml reads from a fresh clone with no flags."""

import hashlib
import re

from conftest import REPO

SAMPLE = REPO / "data" / "sample"


def test_sample_files_match_their_readme():
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w.]+\.gz)` \| ([\d,]+) \| ([\d,]+) \| `([0-9a-f]{64})` \|", readme,
                      re.M)
    assert sorted(name for name, *_ in rows) == sorted(p.name for p in SAMPLE.glob("*.gz"))
    assert len(rows) == 6
    for name, _pairs, size, sha in rows:
        data = (SAMPLE / name).read_bytes()
        assert len(data) == int(size.replace(",", "")) and hashlib.sha256(data).hexdigest() == sha
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 3 * 1024 * 1024
    assert "CC BY 2.0 FR" in readme and "tatoeba.org" in readme


def test_quickstart_config_prepares_from_the_repo_with_no_flags(run_cli, tmp_path, monkeypatch):
    import json

    monkeypatch.delenv("TRANSLATOR_DATA_ROOT", raising=False)
    monkeypatch.chdir(REPO)  # the default data root is ./data
    code, out, err = run_cli("prepare", "configs/quickstart.yaml", "--set",
                             f"run_dir={tmp_path / 'run'}")
    assert code == 0, err
    stats = json.loads((tmp_path / "run" / "prepare.json").read_text())
    assert stats["pairs_read"] == 40_000
    assert stats["pairs"]["dev"] == 500 and stats["pairs"]["test"] == 500
    assert stats["pairs"]["train"] + sum(stats["dropped"].values()) == 40_000
    assert sum(stats["dropped"].values()) < 400  # under 1 %
