"""Start N ``translator train`` workers on this machine, as a multi-worker cluster.

    python scripts/launch_local_cluster.py CONFIG --workers 2 [-- extra train args]

Each worker gets a free port on 127.0.0.1 and its own ``TF_CONFIG`` (worker 0 is the chief
and writes the run dir), ``CUDA_VISIBLE_DEVICES=-1`` unless ``--gpus``, and
``--intra-op-threads`` threads (``TF_NUM_INTRAOP_THREADS``). Their output (stdout and stderr)
is streamed with a ``[worker i]`` prefix. If one worker fails, the others are stopped and the
launcher exits with that worker's exit code (128 + signal for a killed one); 0 when all
succeed. It is the local test harness and a template for a real cluster: there, start
``translator train CONFIG`` on each machine with the ``TF_CONFIG`` this prints for it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def tf_configs(addresses: list[str]) -> list[str]:
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(len(addresses))]


def _stream(i: int, stream, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            print(f"[worker {i}] {line}", flush=True)


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--intra-op-threads", type=int, default=1,
                   help="TF_NUM_INTRAOP_THREADS per worker (default 1)")
    p.add_argument("--gpus", action="store_true", help="let the workers see the GPUs")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds between SIGTERM and SIGKILL when stopping the others (TensorFlow's "
                   "coordination service catches SIGTERM)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    addresses = [f"127.0.0.1:{port}" for port in free_ports(args.workers)]
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads = []
    for i, tf_config in enumerate(tf_configs(addresses)):
        env = dict(os.environ, TF_CONFIG=tf_config,
                   TF_NUM_INTRAOP_THREADS=str(args.intra_op_threads),
                   TF_NUM_INTEROP_THREADS=str(max(1, args.intra_op_threads)))
        if not args.gpus:
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        cmd = [args.python, "-m", "translator", "train", args.config, *extra]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        with lock:
            print(f"[launcher] worker {i}: pid {proc.pid}, {addresses[i]}, TF_CONFIG={tf_config}",
                  flush=True)
        t = threading.Thread(target=_stream, args=(i, proc.stdout, lock), daemon=True)
        t.start()
        threads.append(t)

    def stop_all(signum=None, frame=None) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + args.grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    signal.signal(signal.SIGTERM, lambda s, f: (stop_all(), sys.exit(143)))
    code = 0
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, c = failed[0]
                with lock:
                    print(f"[launcher] worker {i} exited with {_exit_code(c)}; stopping the others",
                          flush=True)
                stop_all()
                code = _exit_code(c)
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop_all()
        code = 130
    for t in threads:
        t.join(timeout=5)
    return code


if __name__ == "__main__":
    sys.exit(main())
