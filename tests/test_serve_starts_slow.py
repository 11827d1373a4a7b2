"""`llmpress serve` starts right every time: 30 starts (plain, and after kill -9), one request each, all
answered. Before the fix ~1 start in 10 ran two engine loops and failed every request."""

from __future__ import annotations

import signal

import httpx
import pytest
from live import free_port, serve_process, wait_ready


@pytest.mark.slow
def test_thirty_starts_all_answer(tiny):
    failures = []
    for i in range(30):
        port = free_port()
        proc = serve_process(str(tiny.path), port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, url)
            r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": f"start {i}",
                                                          "max_tokens": 4, "ignore_eos": True}, timeout=60)
            if r.status_code != 200 or r.json()["usage"]["completion_tokens"] != 4:
                failures.append((i, r.status_code, r.text[:200]))
        finally:
            if i % 3 == 2:
                proc.kill()  # kill -9: the next start must come up clean regardless
                proc.wait(30)
            else:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0
    assert failures == []
