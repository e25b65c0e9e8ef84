"""Load benchmark of ``translator serve``; prints one JSON line per server setting, then a
summary line with the aims.

    python scripts/bench_serve.py runs/spa-eng [--clients 32] [--requests 10000]
        [--set decode.dtype=bfloat16]

For ``--max-batch 64`` and then ``--max-batch 1`` it starts ``translator serve RUN_DIR`` on
127.0.0.1 (a free port), lets ``--clients`` threads send single-sentence LibreTranslate
requests (``POST /translate``, the run's test split, in turn) until ``--requests`` (or
``--requests-unbatched`` for max-batch 1) are answered or ``--time-limit`` seconds have
passed, and reports requests/s, sentences/s, p50/p95/p99 latency, errors, the server's
RSS after the first ``--rss-after`` requests and at the end (and its peak, VmHWM), and the
server's batch-size histogram (from ``/v1/stats``, the warm-up left out). To show where the
time goes it also reports, over the timed requests: the share of wall time the server's
decoding thread was busy (``decode_busy``), and the CPU seconds of the server process and of
the client threads (``cpu_seconds``; both share this machine's cores). The server is then
stopped with SIGTERM and its exit code recorded. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(),
                             re.MULTILINE))
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_test_sentences(run_dir: Path, split: str) -> tuple[list[str], str, str]:
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    path = run_dir / "corpus" / f"{split}.src"
    if not path.is_file():
        sys.exit(f"bench_serve: {path} missing: the run has no prepared {split} split")
    lines = [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    return lines, cfg["data"]["src_lang"], cfg["data"]["tgt_lang"]


def start_server(run_dir: Path, max_batch: int, args) -> tuple[subprocess.Popen, str, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), TF_CPP_MIN_LOG_LEVEL="2")
    env.update(item.split("=", 1) for item in args.server_env)
    cmd = [sys.executable, "-m", "translator", "-q", "serve", str(run_dir), "--port", "0",
           "--max-batch", str(max_batch), "--batch-wait-ms", str(args.batch_wait_ms)]
    if args.beam_size:
        cmd += ["--beam-size", str(args.beam_size)]
    for item in args.overrides:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # one line with the URL once it is ready
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        proc.kill()
        sys.exit(f"bench_serve: the server did not start: {line!r}")
    return proc, "127.0.0.1", int(match.group(1))


def get_json(host: str, port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", path)
    data = json.loads(conn.getresponse().read())
    conn.close()
    return data


def run_clients(host, port, sentences, src, tgt, total, clients, time_limit, on_done):
    """``clients`` threads with a keep-alive connection each; returns latencies (s),
    error messages and the wall time."""
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit

    def client():
        conn = http.client.HTTPConnection(host, port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                i = next_index[0]
                if i >= total:
                    break
                next_index[0] += 1
            body = json.dumps({"q": sentences[i % len(sentences)], "source": src,
                               "target": tgt})
            started = time.perf_counter()
            try:
                conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - started
                if response.status != 200 or "translatedText" not in json.loads(data):
                    raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
                with lock:
                    latencies.append(elapsed)
                    done = len(latencies)
                on_done(done)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started, time.monotonic() >= deadline


def bench(run_dir: Path, max_batch: int, total: int, sentences, src, tgt, args) -> dict:
    proc, host, port = start_server(run_dir, max_batch, args)
    try:
        before = get_json(host, port, "/v1/stats")  # the warm-up's batches
        model = get_json(host, port, "/v1/model")
        rss_at: dict[int, int] = {}  # answered requests -> server RSS (KiB)

        def on_done(done: int) -> None:
            if done % args.rss_after == 0:  # one thread sees each count
                rss_at[done] = rss_kib(proc.pid)[0]

        load_before = os.getloadavg()[0]
        server_cpu, own_cpu = cpu_seconds(proc.pid), time.process_time()
        latencies, errors, seconds, timed_out = run_clients(
            host, port, sentences, src, tgt, total, args.clients, args.time_limit, on_done)
        rss_end, peak = rss_kib(proc.pid)
        server_cpu, own_cpu = cpu_seconds(proc.pid) - server_cpu, time.process_time() - own_cpu
        load_after = os.getloadavg()[0]
        after = get_json(host, port, "/v1/stats")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 60 s"
    sizes = {int(k): v for k, v in after["batch_sizes"].items()}
    for k, v in before["batch_sizes"].items():
        sizes[int(k)] -= v
    sizes = {k: v for k, v in sorted(sizes.items()) if v}
    batches = sum(sizes.values())
    lat = sorted(latencies)
    done = len(latencies)
    first = rss_at.get(args.rss_after)
    return {
        "bench": "serve", "run_dir": str(run_dir), "max_batch": max_batch,
        "server_env": args.server_env,
        # what the server runs with (serve turns oneDNN off for float32 and on for bfloat16
        # decoding unless the environment says)
        "server_tf_enable_onednn_opts": model.get("tf_enable_onednn_opts"),
        "decode_dtype": model.get("decode_dtype"), "server_set": args.overrides,
        "batch_wait_ms": args.batch_wait_ms, "beam_size": model["decode"]["beam_size"],
        "clients": args.clients, "requests": total, "answered": done, "errors": len(errors),
        "error_examples": sorted(set(errors))[:3], "time_limited": timed_out,
        "seconds": round(seconds, 2),
        "requests_per_sec": round(done / seconds, 1),
        "sentences_per_sec": round(done / seconds, 1),  # one sentence per request
        "latency_ms": {"p50": round(1000 * percentile(lat, 50), 1),
                       "p95": round(1000 * percentile(lat, 95), 1),
                       "p99": round(1000 * percentile(lat, 99), 1),
                       "max": round(1000 * lat[-1], 1) if lat else None},
        "server_rss_mib": {
            "after_requests": {str(args.rss_after): round(first / 1024, 1) if first else None,
                               str(done): round(rss_end / 1024, 1)},
            "growth_percent": round(100 * (rss_end - first) / first, 2) if first else None,
            "peak": round(peak / 1024, 1),
            "every": {str(k): round(v / 1024, 1) for k, v in sorted(rss_at.items())}},
        "batch_sizes": {str(k): v for k, v in sizes.items()},
        "mean_batch_size": round(sum(k * v for k, v in sizes.items()) / batches, 2)
        if batches else 0.0,
        # where the time went: the decoding thread's busy share of the wall time, and the
        # CPU seconds of the server and of this process's client threads
        "decode_busy": round((after["decode_seconds"] - before["decode_seconds"]) / seconds, 3)
        if seconds else None,
        "cpu_seconds": {"server": round(server_cpu, 1), "clients": round(own_cpu, 1),
                        "cores_x_wall": round((os.cpu_count() or 1) * seconds, 1)},
        "server_exit_code": code, "cores": os.cpu_count(),
        # other work on the machine: the 1-minute load average before and after the clients
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=10_000,
                   help="requests answered with --max-batch 64 (default 10,000)")
    p.add_argument("--requests-unbatched", type=int, default=1_000,
                   help="requests answered with --max-batch 1 (default 1,000)")
    p.add_argument("--rss-after", type=int, default=1_000,
                   help="server RSS is sampled after this many answered requests (and "
                        "every multiple of it)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable for the server (repeatable), e.g. "
                        "MALLOC_ARENA_MAX=2")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="decode.KEY=VALUE",
                   help="passed to the server (repeatable), e.g. decode.dtype=bfloat16")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-batches", type=int, nargs="+", default=[64, 1], metavar="N")
    p.add_argument("--split", default="test")
    p.add_argument("--time-limit", type=float, default=900.0,
                   help="seconds each setting may send requests for (default 900)")
    args = p.parse_args()

    run_dir = Path(args.run_dir)
    sentences, src, tgt = read_test_sentences(run_dir, args.split)
    results = {}
    for max_batch in args.max_batches:
        total = args.requests if max_batch > 1 else args.requests_unbatched
        results[max_batch] = bench(run_dir, max_batch, total, sentences, src, tgt, args)
        print(json.dumps(results[max_batch]), flush=True)
    if 1 in results and len(results) > 1:
        batched = results[max(results)]
        speedup = batched["sentences_per_sec"] / max(results[1]["sentences_per_sec"], 1e-9)
        growth = batched["server_rss_mib"]["growth_percent"]
        print(json.dumps({
            "bench": "serve-summary", "max_batch": max(results),
            "speedup_sentences_per_sec": round(speedup, 2),
            "aims": {
                "zero_errors": all(r["errors"] == 0 for r in results.values()),
                "batching_speedup_at_least_4x": speedup >= 4,
                "p99_under_1s_at_batched": batched["latency_ms"]["p99"] < 1000,
                # None: not measured (fewer requests than --rss-after)
                "rss_growth_within_10_percent": None if growth is None else abs(growth) <= 10,
            }}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
