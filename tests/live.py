"""Helpers for tests that run real servers on loopback: free ports, an in-process uvicorn, a `serve` process."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    def __init__(self, app: Any, port: int, server: Any, thread: threading.Thread) -> None:
        self.app, self.port, self.server, self.thread = app, port, server, thread
        self.url = f"http://127.0.0.1:{port}"

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def start_server(model: Any, **kw: Any) -> Live:
    """`build_app` + uvicorn in a thread (the app's lifespan starts the engine thread)."""
    import uvicorn

    from llmpress.server import build_app

    app, _ = build_app(model, **kw)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return Live(app, port, server, th)


def serve_process(model: str, port: int, *extra: str) -> subprocess.Popen:
    """`llmpress serve MODEL` as users run it, in its own process."""
    cmd = [sys.executable, "-m", "llmpress.cli.main", "serve", model, "--port", str(port), "--no-auth",
           "--kv-cache-mb", "16", "--log-level", "warning", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "llmpress serve did not become ready"
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
