"""`translator download` against an HTTP server on 127.0.0.1 serving archives built here."""

import gzip
import hashlib
import http.server
import io
import threading
import zipfile
from functools import partial

import pytest

from translator.download import Dataset, DownloadError, Remote, download, spa_eng_split


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


SPA = "Go.\tVe.\nHi.\tHola.\nRun!\tCorre.\nRun!\tCorred.\nWho?\t¿Quién?\n"


def _spa_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("spa-eng/spa.txt", SPA)
        z.writestr("spa-eng/_about.txt", "about")
    return buf.getvalue()


def test_download_zip_verify_and_split(server, tmp_path):
    root, url = server
    data = _spa_zip()
    (root / "spa-eng.zip").write_bytes(data)
    ds = {"spa-eng": Dataset("spa-eng", (Remote(f"{url}/spa-eng.zip", hashlib.sha256(data).hexdigest(),
                                                "spa-eng/spa.txt", zip_member="spa-eng/spa.txt"),),
                             finish=lambda dest: spa_eng_split(dest / "spa-eng"))}
    dest = tmp_path / "dest"
    written = download("spa-eng", dest, datasets=ds)
    assert written == [dest / "spa-eng" / "spa.txt"]
    assert (dest / "spa-eng" / "spa.txt").read_text(encoding="utf-8") == SPA
    en = []
    for split in ("train", "dev", "test"):
        lines_en = (dest / "spa-eng" / f"{split}.en").read_text(encoding="utf-8").splitlines()
        lines_es = (dest / "spa-eng" / f"{split}.es").read_text(encoding="utf-8").splitlines()
        assert len(lines_en) == len(lines_es)
        en += lines_en
    assert sorted(en) == sorted(line.split("\t")[0] for line in SPA.splitlines())


def test_download_gunzip_and_checksum(server, tmp_path):
    root, url = server
    text = b"A dog.\nA cat.\n"
    (root / "train.en.gz").write_bytes(gzip.compress(text))
    good = {"m": Dataset("m", (Remote(f"{url}/train.en.gz", hashlib.sha256(text).hexdigest(),
                                      "m/train.en", gunzip=True),))}
    download("m", tmp_path / "d", datasets=good)
    assert (tmp_path / "d" / "m" / "train.en").read_bytes() == text
    bad = {"m": Dataset("m", (Remote(f"{url}/train.en.gz", "0" * 64, "m/other.en", gunzip=True),))}
    with pytest.raises(DownloadError, match="does not match the expected"):
        download("m", tmp_path / "d", datasets=bad)
    assert not (tmp_path / "d" / "m" / "other.en").exists()


def test_download_offline_and_unknown(tmp_path):
    offline = {"x": Dataset("x", (Remote("http://127.0.0.1:9/none.zip", "0" * 64, "x/y"),))}
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:9/none\.zip"):
        download("x", tmp_path, datasets=offline, timeout=5)
    with pytest.raises(DownloadError, match="unknown dataset 'nope'; available: multi30k, spa-eng"):
        download("nope", tmp_path)


def test_download_cli_offline_one_line(run_cli, tmp_path, monkeypatch):
    import translator.download as dl

    monkeypatch.setitem(dl.DATASETS, "spa-eng", Dataset(
        "spa-eng", (Remote("http://127.0.0.1:9/spa-eng.zip", "0" * 64, "spa-eng/spa.txt"),)))
    code, out, err = run_cli("download", "spa-eng", "--dest", tmp_path)
    assert code == 2 and "cannot download" in err and "Traceback" not in err


def test_spa_eng_split_keeps_shared_spanish_together(tmp_path):
    # "I ran 7." hashes to test, "I was running 7." to train: grouping by English alone put
    # the Spanish "Corrí 7." in both. Its whole group (linked through either side) is test.
    lines = [
        "I was running 0.\tEstaba corriendo 0.",
        "I was running 7.\tCorrí 7.\tCC-BY 2.0 (France) Attribution: tatoeba.org #1",
        "Hi  there.\tHola\u00a0 allí.",
        "I ran 7.\tCorrí 7.",
        "I was running 7.\tEstaba corriendo 7.",
    ]
    (tmp_path / "spa.txt").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    spa_eng_split(tmp_path)

    def read(name):
        return (tmp_path / name).read_text(encoding="utf-8").splitlines()

    assert read("test.en") == ["I was running 7.", "I ran 7.", "I was running 7."]
    assert read("test.es") == ["Corrí 7.", "Corrí 7.", "Estaba corriendo 7."]
    assert read("dev.en") == [] and read("dev.es") == []
    # not normalized: the sentences are spa.txt's columns as they are
    assert read("train.en") == ["I was running 0.", "Hi  there."]
    assert read("train.es") == ["Estaba corriendo 0.", "Hola\u00a0 allí."]
