"""Server CPU per request of the serving stack alone: the real app (FastAPI, the body-limit
middleware, pydantic, the micro-batcher) with a stand-in translator whose batch takes 20 ms
of sleep (a decode that releases the GIL, as TensorFlow's does) and no CPU. 32 client
threads send 6,000 single-sentence `POST /translate` requests per MODE (the clients of
`scripts/bench_serve.py`, which also check each answer).

    PYTHONPATH=. python results/serve-bf16/http_cost.py MODE [MODE ...]

MODE: asyncio-h11 (what `translator serve` runs with the project's dependencies),
asyncio-httptools (uvicorn picks httptools when it is installed), uvloop-httptools.
Session 22 ran it beside a training run (http-cost.txt) in a scratch form with its own
client loop and p50 as the middle latency; this copy uses bench_serve's clients and
nearest-rank percentile instead, and prints the error count too.
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# the load generator and the /proc readings of the serving benchmark
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_serve import cpu_seconds, percentile, run_clients  # noqa: E402


def server(mode: str) -> None:
    import asyncio

    import uvicorn

    from translator.serving import server as srv
    from translator.serving.app import ServeSettings, create_app
    from translator.translator import Translation

    class Stand:
        decode = SimpleNamespace(beam_size=5, length_penalty=0.6, n_best=1)

        def settings(self, beam=None):
            return 5, 0.6, 1

        def translate(self, texts, **kw):
            time.sleep(0.02)
            return [Translation(text=t[::-1], score=-1.0) for t in texts]

    loop, http = mode.split("-")
    app = create_app(Stand(), ServeSettings("es", "en", max_batch=64, batch_wait_ms=5.0))
    sock = srv.bind("127.0.0.1", 0)
    config = uvicorn.Config(app, log_config=None, access_log=False, http=http, lifespan="on")
    s = uvicorn.Server(config)

    async def main():
        task = asyncio.create_task(s.serve(sockets=[sock]))
        while not s.started:
            await asyncio.sleep(0.02)
        print(sock.getsockname()[1], flush=True)
        await task

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def client(mode: str, total: int = 6000, clients: int = 32) -> None:
    proc = subprocess.Popen([sys.executable, __file__, "serve", mode], stdout=subprocess.PIPE,
                            text=True)
    port = int(proc.stdout.readline())
    cpu0 = cpu_seconds(proc.pid)
    latencies, errors, wall, _ = run_clients("127.0.0.1", port, ["hola, ¿cómo estás?"], "es", "en",
                                             total, clients, 600.0, lambda done: None)
    cpu1 = cpu_seconds(proc.pid)
    proc.terminate()
    proc.wait()
    print(json.dumps({"mode": mode, "requests": total, "errors": len(errors),
                      "wall_s": round(wall, 2), "req_per_s": round(len(latencies) / wall, 1),
                      "server_cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / total, 3),
                      "p50_ms": round(1000 * percentile(sorted(latencies), 50), 1)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        server(sys.argv[2])
    else:
        for m in sys.argv[1:]:
            client(m)
