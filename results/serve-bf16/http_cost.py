"""Server CPU per request of the serving stack alone: the real app (FastAPI, the body-limit
middleware, pydantic, the micro-batcher) with a stand-in translator whose batch takes 20 ms
of sleep (a decode that releases the GIL, as TensorFlow's does) and no CPU. 32 client
threads send 6,000 single-sentence `POST /translate` requests per MODE.

    PYTHONPATH=. python results/serve-bf16/http_cost.py MODE [MODE ...]

MODE: asyncio-h11 (what `translator serve` runs with the project's dependencies),
asyncio-httptools (uvicorn picks httptools when it is installed), uvloop-httptools.
Session 22 ran it beside a training run (http-cost.txt) in a denser form, the same logic;
this copy is reformatted for the repository (and checked to run).
"""

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace


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


def cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(mode: str, total: int = 6000, clients: int = 32) -> None:
    proc = subprocess.Popen([sys.executable, __file__, "serve", mode], stdout=subprocess.PIPE,
                            text=True)
    port = int(proc.stdout.readline())
    lock = threading.Lock()
    sent = [0]
    latencies = []

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                if sent[0] >= total:
                    break
                sent[0] += 1
            body = json.dumps({"q": "hola, ¿cómo estás?", "source": "es", "target": "en"})
            started = time.perf_counter()
            conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, data
            with lock:
                latencies.append(time.perf_counter() - started)

    cpu0, wall = cpu(proc.pid), time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu1 = time.perf_counter() - wall, cpu(proc.pid)
    proc.terminate()
    proc.wait()
    latencies.sort()
    print(json.dumps({"mode": mode, "requests": total, "wall_s": round(wall, 2),
                      "req_per_s": round(total / wall, 1),
                      "server_cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / total, 3),
                      "p50_ms": round(1000 * latencies[len(latencies) // 2], 1)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        server(sys.argv[2])
    else:
        for m in sys.argv[1:]:
            client(m)
