"""What the benchmarks that start `llmpress` servers share: a loopback port, start-until-ready, stop, percentiles.

Imported by gateway.py, scale.py, serving.py and soak.py (run as `python benchmarks/NAME.py`, so this
directory is on sys.path). Servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

_LAUNCHED: list[subprocess.Popen] = []


@atexit.register
def _stop_leftovers() -> None:
    """A benchmark that fails between starting a server and its `finally` must not leave the server running."""
    for proc in _LAUNCHED:
        stop(proc, wait=20)


def pct(xs: list[float], q: float, empty: float | None = float("nan")) -> float | None:
    """The q-th percentile (nearest rank) of `xs`; `empty` when there is no sample."""
    if not xs:
        return empty
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], port: int, *, ready: str = "/ready", log: Path | None = None,
           env: dict[str, str] | None = None, timeout: float = 300, new_session: bool = False,
           cpus: set[int] | None = None) -> subprocess.Popen:
    """`python -m llmpress.cli.main ARGS` in its own process; returns once GET 127.0.0.1:PORT/READY is 200.

    Output goes to `log` (appended) when given, else stderr is kept for the error message. `cpus` pins the
    process to those CPUs. A process that exits or is not ready within `timeout` seconds ends the benchmark
    with its last output.
    """
    cmd = [sys.executable, "-m", "llmpress.cli.main", *args]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    if log is not None:
        out = log.open("a")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=new_session,
                                preexec_fn=pin)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=new_session, preexec_fn=pin)

    _LAUNCHED.append(proc)

    def last_output() -> str:
        if log is not None:
            return log.read_text(errors="replace")[-2000:]
        return (proc.stderr.read() if proc.stderr else "")[-2000:]

    url = f"http://127.0.0.1:{port}{ready}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llmpress {args[0]} exited with {proc.returncode}: {last_output()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(proc, signal.SIGKILL)
    raise SystemExit(f"llmpress {args[0]} did not become ready in {timeout:.0f} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, wait: float = 60) -> None:
    """Send `sig` (SIGINT: drain in-flight requests, as Ctrl-C does), then kill the process group after `wait` s."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(30)
