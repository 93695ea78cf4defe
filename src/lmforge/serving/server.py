"""Run the API on uvicorn: bind, say where, serve until stopped (Ctrl-C, SIGTERM, or
``max_requests`` answered).

    serve("runs/gpt", port=8000)                      # blocks; `lmforge serve runs/gpt`
    with running_server(served, port=0) as url: ...   # in a background thread (tests, notebooks)
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Iterator

import uvicorn

from ..errors import ConfigError
from .app import ServeOptions, create_app
from .served import ServedModel

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), or ConfigError naming what went wrong."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    return sock


def _server(served: ServedModel, options: ServeOptions) -> uvicorn.Server:
    holder: list[uvicorn.Server] = []
    app = create_app(served, options, on_limit=lambda: setattr(holder[0], "should_exit", True))
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on")
    holder.append(uvicorn.Server(config))
    return holder[0]


def check_host(host: str, options: ServeOptions) -> None:
    if not is_loopback(host) and not options.api_key:
        raise ConfigError(f"binding {host} exposes the model beyond this machine: pass "
                          "--api-key KEY (clients then send 'Authorization: Bearer KEY')")


def serve(served: ServedModel, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          options: ServeOptions | None = None,
          ready: Callable[[str], None] | None = None) -> None:
    """Serve ``served`` until stopped; ``ready(url)`` is called once listening."""
    options = options or ServeOptions()
    check_host(host, options)
    sock = bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = _server(served, options)
    if ready is not None:
        ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def running_server(served: ServedModel, host: str = DEFAULT_HOST, port: int = 0,
                   options: ServeOptions | None = None,
                   timeout: float = 60.0) -> Iterator[str]:
    """Serve in a background thread; yields the base URL and stops the server on exit."""
    options = options or ServeOptions()
    check_host(host, options)
    sock = bind(host, port)
    server = _server(served, options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        waited = threading.Event()
        while not server.started and thread.is_alive() and not waited.wait(0.05):
            timeout -= 0.05
            if timeout <= 0:
                raise RuntimeError("the server did not start in time")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def announce(url: str, name: str) -> None:
    print(f"lmforge serve: listening on {url} (model {name}); playground at {url}/, "
          f"API at {url}/v1, docs at {url}/docs", file=sys.stderr, flush=True)
