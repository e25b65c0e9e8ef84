"""``translator serve`` against a real uvicorn on 127.0.0.1, with the tiny memorized model
trained in the test session (conftest's ``memorized_run``): every endpoint, every limit and
bad input, concurrency and micro-batching, a failing batch, a clean SIGTERM, and the demo
page in a real headless chromium through Selenium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
BEAM = 3
MAX_SENTENCES = 8
MAX_CHARS = 100


class Server:
    """``python -m translator serve RUN_DIR --port 0 ...`` in a subprocess; ``url`` is
    read from the one line it prints when it is ready."""

    def __init__(self, run_dir: Path, *flags: str, timeout: float = 300):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "translator", "serve", str(run_dir), "--port", "0", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        ready = lines[0] if lines else ""
        match = re.fullmatch(r"serving (\S+) at (http://127\.0\.0\.1:(\d+)/) \(API docs: "
                             r"http://127\.0\.0\.1:\d+/docs\)\n", ready)
        if not match:
            self.proc.kill()
            raise AssertionError(f"no ready line: {ready!r}; stderr: {''.join(self.stderr)}")
        self.pair, self.url, self.port = match.group(1), match.group(2), int(match.group(3))

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path.lstrip("/"), timeout=120, **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path.lstrip("/"), timeout=60)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server(memorized_run):
    s = Server(memorized_run["run_dir"], "--beam-size", str(BEAM), "--max-sentences",
               str(MAX_SENTENCES), "--max-chars", str(MAX_CHARS), "--batch-wait-ms", "30")
    yield s
    assert s.stop() == 0, "".join(s.stderr)


@pytest.fixture(scope="module")
def reference(memorized_run):
    """The Translator the server loads, in this process: what one-by-one gives."""
    from translator import Translator

    return Translator.load(memorized_run["run_dir"])


def error_of(response: requests.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body["error"]


# ----------------------------------------------------------------------------- endpoints


def test_health_languages_and_model(server, reference):
    assert server.pair == "xx-yy"
    assert server.get("/health").json() == {"status": "ok"}
    assert server.get("/languages").json() == [
        {"code": "xx", "name": "xx", "targets": ["yy"]},
        {"code": "yy", "name": "yy", "targets": []}]
    info = server.get("/v1/model").json()
    assert (info["source"], info["target"], info["pair"]) == ("xx", "yy", "xx-yy")
    assert info["parameters"] == reference.model.count_params() > 0
    assert info["decode"] == {"beam_size": BEAM, "length_penalty": reference.decode.length_penalty,
                              "n_best": 1, "max_ratio": reference.decode.max_ratio,
                              "max_extra": reference.decode.max_extra}
    assert info["serving"] == {"beam_size": BEAM, "max_batch": 64, "batch_wait_ms": 30.0,
                               "max_sentences": MAX_SENTENCES, "max_chars": MAX_CHARS,
                               "max_body_bytes": 1024 * 1024}
    assert info["train_max_len"] == 20 and info["weights"] == "best.weights.h5"
    assert info["test"] is None  # no evaluate record saved in the run dir
    # serve turns oneDNN off unless the environment says otherwise (flat RSS under load)
    assert info["tf_enable_onednn_opts"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0")


def test_model_reports_the_test_bleu_saved_in_the_run(memorized_run, tmp_path):
    from test_translate_cli import copy_run

    from translator.serving.app import saved_test_scores

    run = copy_run(memorized_run["run_dir"], tmp_path / "run")
    assert saved_test_scores(run) is None
    (run / "eval").mkdir()
    record = {"bleu": 41.5, "chrf": 60.1, "split": "test", "beam_size": 5, "sentences": 9}
    (run / "eval" / "test.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    (run / "eval" / "dev.json").write_text(json.dumps({**record, "split": "dev"}), "utf-8")
    assert saved_test_scores(run) == {"bleu": 41.5, "chrf": 60.1, "sentences": 9, "beam_size": 5,
                                "file": str(run / "eval" / "test.json")}


def test_docs_page_and_static_files(server):
    docs = server.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = server.get("/openapi.json").json()
    assert {"/translate", "/languages", "/v1/translate", "/v1/model", "/v1/stats",
            "/health"} <= set(spec["paths"])
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<textarea id="source"' in page.text and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert server.get(f"/static/{name}").status_code == 200
    error_of(server.get("/nowhere"), 404, "Not Found")
    error_of(server.get("/v1/translate"), 405, "Method Not Allowed")


def test_v1_translate(server, memorized_run, reference):
    src, tgt = memorized_run["src"], memorized_run["tgt"]
    r = server.post("/v1/translate", json={"sentences": [src[0], "", src[1]]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["beam_size"], body["n_best"]) == (BEAM, 1)
    texts = [t["text"] for t in body["translations"]]
    assert texts == [tgt[0], "", tgt[1]]  # one output per input, empty in, empty out
    assert body["translations"][1] == {"text": "", "score": 0.0, "n_best": [],
                                       "source_too_long": False}
    expected = reference.translate([src[0]], beam_size=BEAM)[0]
    assert body["translations"][0]["score"] == pytest.approx(expected.score, abs=1e-3)
    # n-best and attention
    r = server.post("/v1/translate", json={"sentences": [src[2], ""], "n_best": 3,
                                           "attention": True})
    assert r.status_code == 200, r.text
    one, empty = r.json()["translations"]
    expected = reference.translate([src[2]], beam_size=BEAM, n_best=3, return_attention=True)[0]
    assert [h["text"] for h in one["n_best"]] == [h.text for h in expected.n_best]
    assert one["n_best"][0]["text"] == one["text"] == tgt[2] and len(one["n_best"]) >= 2
    scores = [h["score"] for h in one["n_best"]]
    assert scores == sorted(scores, reverse=True)
    assert one["source_pieces"] == expected.source_pieces and one["source_pieces"][-1] == "</s>"
    assert one["target_pieces"] == expected.n_best[0].pieces + ["</s>"]
    matrix = one["attention"]
    assert len(matrix) == len(one["target_pieces"])
    assert all(len(row) == len(one["source_pieces"]) for row in matrix)
    assert all(sum(row) == pytest.approx(1.0, abs=2e-3) for row in matrix)
    assert empty["source_pieces"] == empty["target_pieces"] == empty["attention"] == []
    # greedy on request
    r = server.post("/v1/translate", json={"sentences": [src[3]], "beam_size": 1})
    assert r.json()["beam_size"] == 1 and r.json()["translations"][0]["text"] == tgt[3]


def test_libretranslate_api_json_and_form(server, memorized_run):
    src, tgt = memorized_run["src"], memorized_run["tgt"]
    r = server.post("/translate", json={"q": src[0], "source": "xx", "target": "yy"})
    assert r.status_code == 200 and r.json() == {"translatedText": tgt[0]}
    r = server.post("/translate", json={"q": [src[1], "", src[2]], "source": "auto",
                                        "target": "yy", "api_key": "ignored"})
    assert r.json() == {"translatedText": [tgt[1], "", tgt[2]]}
    r = server.post("/translate", data={"q": src[3], "source": "xx", "target": "yy",
                                        "format": "text"})  # form-encoded
    assert r.status_code == 200 and r.json() == {"translatedText": tgt[3]}
    r = server.post("/translate", files={"q": (None, src[4]), "source": (None, "xx"),
                                         "target": (None, "yy")})  # multipart form
    assert r.status_code == 200 and r.json() == {"translatedText": tgt[4]}
    r = server.post("/translate", json={"q": src[5], "source": "xx", "target": "yy",
                                        "alternatives": 2})
    body = r.json()
    assert body["translatedText"] == tgt[5]
    assert len(body["alternatives"]) <= 2 and tgt[5] not in body["alternatives"]
    r = server.post("/translate", data={"q": [src[6], src[7]], "source": "xx", "target": "yy",
                                        "alternatives": "1"})
    body = r.json()
    assert body["translatedText"] == [tgt[6], tgt[7]]
    assert len(body["alternatives"]) == 2 and all(len(a) <= 1 for a in body["alternatives"])
    # a source or target that is not the model's pair
    for source, target in (("en", "yy"), ("xx", "de"), ("yy", "xx")):
        r = server.post("/translate", json={"q": "x", "source": source, "target": target})
        error_of(r, 400, 'translates xx to yy only (source "xx", target "yy")',
                 f'got source "{source}", target "{target}"')
    error_of(server.post("/translate", json={"q": "x", "source": "xx", "target": "yy",
                                             "format": "html"}), 400, "format")


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("path, kwargs, status, fragments", [
    # body over 1 MB, with a Content-Length and chunked
    ("/v1/translate", {"data": b"x" * (1024 * 1024 + 1)}, 413, ["over the limit of 1,048,576"]),
    ("/translate", {"data": (b"x" * 65536 for _ in range(17))}, 413, ["1,048,576 bytes"]),
    # more than --max-sentences, a sentence over --max-chars
    ("/v1/translate", {"json": {"sentences": ["a"] * (MAX_SENTENCES + 1)}}, 413,
     ["9 sentences", f"limit of {MAX_SENTENCES}", "--max-sentences"]),
    ("/v1/translate", {"json": {"sentences": ["a", "b" * (MAX_CHARS + 1)]}}, 413,
     ["sentences.1", "101 characters", f"limit of {MAX_CHARS}", "--max-chars"]),
    ("/translate", {"json": {"q": ["a"] * (MAX_SENTENCES + 1), "source": "xx", "target": "yy"}},
     413, ["q: 9 sentences", "--max-sentences"]),
    ("/translate", {"json": {"q": "b" * (MAX_CHARS + 1), "source": "xx", "target": "yy"}},
     413, ["q: 101 characters", "--max-chars"]),
    # not JSON
    ("/v1/translate", {"data": b'{"sentences": ['}, 400, ["invalid JSON"]),
    ("/translate", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}, 400,
     ["invalid JSON"]),
    # missing or wrong-typed fields
    ("/v1/translate", {"json": {}}, 422, ["sentences: field required"]),
    ("/v1/translate", {"json": {"sentences": "one"}}, 422, ["sentences: Input should be a valid array"]),
    ("/v1/translate", {"json": {"sentences": ["a", 2]}}, 422, ["sentences.1: Input should be a valid string"]),
    ("/v1/translate", {"json": {"sentences": ["a"], "beam_size": "3"}}, 422, ["beam_size"]),
    ("/v1/translate", {"json": {"sentences": ["a"], "beam_size": 0}}, 422, ["beam_size"]),
    ("/v1/translate", {"json": {"sentences": ["a"], "beam_size": 17}}, 422, ["beam_size"]),
    ("/v1/translate", {"json": {"sentences": ["a"], "attention": "yes"}}, 422, ["attention"]),
    ("/v1/translate", {"json": {"sentences": ["a"], "nbest": 2}}, 422, ["nbest: unknown field"]),
    ("/v1/translate", {"json": {"sentences": ["a"], "n_best": 4}}, 422,
     ["n_best: 4 is larger than the beam size 3"]),
    ("/v1/translate", {"json": ["a"]}, 422, ["Input should be an object"]),
    ("/translate", {"json": {"source": "xx", "target": "yy"}}, 400, ["q: field required"]),
    ("/translate", {"json": {"q": "a", "target": "yy"}}, 400, ["source: field required"]),
    ("/translate", {"json": {"q": 5, "source": "xx", "target": "yy"}}, 400, ["q"]),
    ("/translate", {"json": {"q": "a", "source": "xx", "target": "yy", "alternatives": -1}},
     400, ["alternatives"]),
])
def test_limits_and_bad_input_get_a_json_error(server, path, kwargs, status, fragments):
    error_of(server.post(path, **kwargs), status, *fragments)


def test_at_the_limits_is_fine(server):
    r = server.post("/v1/translate", json={"sentences": ["a" * MAX_CHARS] * MAX_SENTENCES})
    assert r.status_code == 200 and len(r.json()["translations"]) == MAX_SENTENCES


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_requests_are_batched_and_match_one_by_one(server, memorized_run, reference):
    sentences = memorized_run["src"]  # the 20 memorized ones
    assert len(sentences) == 20
    expected = [reference.translate([s], beam_size=BEAM)[0] for s in sentences]  # one by one
    before = server.get("/v1/stats").json()
    barrier = threading.Barrier(20)

    def one(sentence):
        barrier.wait()
        r = requests.post(server.url + "v1/translate", json={"sentences": [sentence]}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["translations"][0]

    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(one, sentences))
    assert [g["text"] for g in got] == [e.text for e in expected] == memorized_run["tgt"]
    for g, e in zip(got, expected, strict=True):
        assert g["score"] == pytest.approx(e.score, abs=1e-3)
    after = server.get("/v1/stats").json()
    assert after["requests"] - before["requests"] == 20
    assert after["sentences"] - before["sentences"] == 20
    new = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    new = {k: v for k, v in new.items() if v}
    assert sum(k * v for k, v in new.items()) == 20
    assert max(new) > 1, f"no batch of more than one request: {new}"
    assert sum(new.values()) < 20


def test_a_failing_batch_gives_500_and_the_server_goes_on(memorized_run):
    """The app in-process under a real uvicorn, with a Translator whose batch fails when
    it holds the sentence "boom"."""
    import uvicorn

    from translator import Translator
    from translator.serving.app import ServeSettings, create_app
    from translator.serving.server import bind, url_of

    class Failing(Translator):
        def translate(self, texts, **kwargs):
            if "boom" in texts:
                raise RuntimeError("the search blew up")
            return super().translate(texts, **kwargs)

    t = Failing.load(memorized_run["run_dir"])
    app = create_app(t, ServeSettings("xx", "yy", max_batch=8, batch_wait_ms=200, warm_up=False))
    sock = bind("127.0.0.1", 0)
    url = url_of(sock)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        src, tgt = memorized_run["src"], memorized_run["tgt"]

        def post(sentence):
            return requests.post(url + "v1/translate", json={"sentences": [sentence]}, timeout=60)

        with ThreadPoolExecutor(2) as pool:  # "boom" and src[0] share a 200 ms batch
            failed = list(pool.map(post, ["boom", src[0]]))
        for r in failed:
            error_of(r, 500, "translation failed: RuntimeError: the search blew up")
        r = post(src[1])
        assert r.status_code == 200 and r.json()["translations"][0]["text"] == tgt[1]
        stats = requests.get(url + "v1/stats", timeout=10).json()
        assert stats["failed_batches"] == 1 and stats["batches"] == 2
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_sigterm_answers_the_requests_in_flight_then_exits_0(memorized_run):
    src, tgt = memorized_run["src"], memorized_run["tgt"]
    s = Server(memorized_run["run_dir"], "--batch-wait-ms", "3000", "--max-batch", "64")
    try:
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(requests.post, s.url + "translate", timeout=60,
                                   json={"q": src[i], "source": "xx", "target": "yy"})
                       for i in range(10)]
            deadline = time.monotonic() + 10
            while s.get("/v1/stats").json()["pending_requests"] < 10:
                assert time.monotonic() < deadline, "the 10 requests never got in flight"
                time.sleep(0.02)
            s.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            # new connections are refused while the 10 are still being answered
            refused = False
            while time.monotonic() - sent < 2.5 and not refused:
                try:
                    socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
                    time.sleep(0.05)
                except OSError:
                    refused = True
            assert refused, "the server still took new connections after SIGTERM"
            assert not any(f.done() for f in futures)  # still waiting for their batch
            responses = [f.result(60) for f in futures]
        assert [r.status_code for r in responses] == [200] * 10
        assert [r.json()["translatedText"] for r in responses] == tgt[:10]
        assert s.proc.wait(60) == 0
    finally:
        s.stop()
    err = "".join(s.stderr)
    assert "Traceback" not in err, err


# ----------------------------------------------------------------------------- command line


def test_serve_flags_and_a_taken_port_give_one_line(memorized_run, run_cli, tmp_path):
    run = memorized_run["run_dir"]
    for flags, fragment in ((["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
                            (["--batch-wait-ms", "-1"], "--batch-wait-ms must be >= 0"),
                            (["--batch-wait-ms", "nan"], "'nan' is not a finite number"),
                            (["--max-chars", "0"], "--max-chars must be >= 1"),
                            (["--port", "70000"], "--port must be <= 65535"),
                            (["--beam-size", "17"], "--beam-size must be <= 16")):
        code, out, err = run_cli("serve", run, *flags)
        assert code == 2 and out == "" and err.count("\n") == 1, (flags, err)
        assert err.startswith("translator: error: ") and fragment in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli("serve", run, "--port", port)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port" in err
    code, out, err = run_cli("serve", tmp_path, "--port", "0")
    assert code == 2 and "not a run dir (no config.yaml)" in err


# ----------------------------------------------------------------------------- browser


def _chromium():
    """(chromium, chromedriver) paths, or the reason the browser test cannot run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[dev]')"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        return None, ("needs Debian's chromium and chromium-driver (apt-get install chromium "
                      "chromium-driver); .ci/run installs them")
    return (browser, driver), ""


def test_demo_page_in_headless_chromium(server, memorized_run, tmp_path):
    paths, reason = _chromium()
    if paths is None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1000", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    src, tgt = memorized_run["src"], memorized_run["tgt"]
    try:
        # the page replaces its results when an answer comes: an element found just
        # before that goes stale, and the wait looks again
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(server.url)
        wait.until(lambda d: "parameters" in d.find_element(By.ID, "model-info").text)
        assert driver.find_element(By.ID, "pair").text == "xx → yy"
        sentence = max(src, key=len)
        box = driver.find_element(By.ID, "source")
        box.send_keys(sentence)
        driver.find_element(By.ID, "translate").click()
        shown = wait.until(lambda d: d.find_elements(By.ID, "translation-0"))[0]
        api = requests.post(server.url + "v1/translate", timeout=60, json={
            "sentences": [sentence], "beam_size": BEAM, "n_best": BEAM, "attention": True,
        }).json()["translations"][0]
        assert shown.text == api["text"] == tgt[src.index(sentence)]
        cells = driver.find_elements(By.CSS_SELECTOR, "#results table.heatmap tbody td")
        assert len(cells) == len(api["source_pieces"]) * len(api["target_pieces"]) > 0
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.heatmap thead th.col")) == len(
            api["source_pieces"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.heatmap tbody tr")) == len(
            api["target_pieces"])
        weights = [float(c.get_attribute("data-weight")) for c in cells]
        flat = [round(w, 3) for row in api["attention"] for w in row]
        assert weights == pytest.approx(flat, abs=1e-3)
        assert ": " in cells[0].get_attribute("title")  # the value on hover
        items = driver.find_elements(By.CSS_SELECTOR, "#results ol.nbest li")
        shown_nbest = [(li.find_element(By.CSS_SELECTOR, "span.text").text,
                        float(li.find_element(By.CSS_SELECTOR, "span.score").text))
                       for li in items]
        assert shown_nbest == [(h["text"], pytest.approx(h["score"], abs=1e-3))
                               for h in api["n_best"]]
        assert driver.find_element(By.ID, "error").get_attribute("hidden") is not None
        shot = tmp_path / "demo.png"  # the whole page: the heatmap is below the fold
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1100, height + 120)
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        # Ctrl+Enter translates, from the keyboard
        box.clear()
        box.send_keys(src[0])
        box.send_keys(Keys.CONTROL, Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "translation-0").text == tgt[0])
        # an error from the API shows on the page
        box.clear()
        box.send_keys("x" * (MAX_CHARS + 1))
        box.send_keys(Keys.CONTROL, Keys.ENTER)
        error = wait.until(lambda d: d.find_element(By.ID, "error").is_displayed()
                           and d.find_element(By.ID, "error"))
        assert "413" in error.text and "--max-chars" in error.text
        assert "stale" in driver.find_element(By.ID, "results").get_attribute("class")
        driver.save_screenshot(str(tmp_path / "demo-error.png"))
    finally:
        driver.quit()
