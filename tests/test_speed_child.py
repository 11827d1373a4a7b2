"""The speed child process: both pipes drained concurrently, a wall-clock timeout that kills the child."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from llmpress.errors import LlmpressError
from llmpress.evaluate.speed import SpeedConfig, measure_in_subprocess, run_json_child

LOUD = ("import sys, json\n"
        "sys.stderr.write('w' * (3 * 2**20)); sys.stderr.flush()\n"  # 3 MB: far past a 64 KB pipe buffer
        "print(json.dumps({'event': 'result', 'result': {'ok': 1}}), flush=True)\n")
SILENT = "import time\nprint('{\"event\": \"progress\"}', flush=True)\ntime.sleep(600)\n"


def _call_within(seconds: float, fn: Any) -> Any:
    """Run fn in a thread; fail (instead of hanging the suite) when it has not returned in `seconds`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the child runner hung for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_child_flooding_stderr_does_not_hang() -> None:
    events: list[dict[str, Any]] = []
    code, stderr, timed_out = _call_within(
        60, lambda: run_json_child([sys.executable, "-c", LOUD], timeout=120, on_event=events.append))
    assert code == 0 and not timed_out
    assert events == [{"event": "result", "result": {"ok": 1}}]
    assert 0 < len(stderr) <= 3 * 2**20 and set(stderr) == {"w"}  # the tail is kept, not the whole flood


def test_silent_child_is_killed_at_the_deadline() -> None:
    events: list[dict[str, Any]] = []
    t = time.monotonic()
    code, _, timed_out = _call_within(
        60, lambda: run_json_child([sys.executable, "-c", SILENT], timeout=3, on_event=events.append))
    assert timed_out and code != 0  # killed, not left sleeping
    assert events == [{"event": "progress"}]
    assert time.monotonic() - t < 60


def test_measure_in_subprocess_timeout_is_one_clear_error(tiny) -> None:
    # Importing torch alone takes longer than 0.2 s, so the child cannot finish: it must be killed and named.
    with pytest.raises(LlmpressError, match="did not finish within 0 s"):
        _call_within(60, lambda: measure_in_subprocess(tiny.path, SpeedConfig(batch_sizes=(1,), new_tokens=2,
                                                                              repeats=1), timeout=0.2))
