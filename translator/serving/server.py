"""Run an app under uvicorn on a socket bound beforehand, with a clean stop.

SIGTERM and SIGINT (Ctrl-C) make uvicorn stop accepting connections, finish the requests
in flight (the app's lifespan then answers whatever is still queued) and return; the
process then ends normally instead of being killed by the signal uvicorn re-raises.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

from translator.errors import RunError, UserError

log = logging.getLogger(__name__)

#: How long a stop waits for requests in flight before cancelling them.
GRACEFUL_SECONDS = 60


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or a UserError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; choose another --port" if exc.errno == 98 else ""  # EADDRINUSE
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def serve(app, sock: socket.socket, on_ready: Callable[[], None], access_log: bool = False) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT; ``on_ready()`` once the app's
    start-up (model warm-up) is done and requests are answered."""
    import uvicorn

    config = uvicorn.Config(app, log_config=None, access_log=access_log,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, lifespan="on")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            on_ready()
        await task

    # uvicorn handles both signals while it serves and re-raises the one it caught after
    # its graceful stop: answered by these no-op handlers, the process exits normally
    previous = {sig: signal.signal(sig, lambda signum, frame: None)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if not server.started:
        raise RunError("the server did not start (see the log above)")
