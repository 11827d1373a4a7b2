"""Speed: load time, time to first token, decode tokens/s at several batch sizes, peak RSS.

Each measurement uses a fixed prompt length and a fixed number of new tokens with EOS
ignored, one warm-up and several repeats, reporting the median and the spread
(min..max). `measure_in_subprocess` runs it in a fresh Python process so load time is
cold and peak RSS belongs to this model alone.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmpress.errors import ConfigError, LlmpressError

RUNNERS = ("auto", "hf", "lean", "engine")


@dataclass
class SpeedConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    prompt_tokens: int = 32
    new_tokens: int = 32
    ttft_prompt_tokens: int = 128
    warmup: int = 1
    repeats: int = 3
    # hf: plain `model.generate()`; lean: a minimal greedy loop over the HF forward with a
    # KV cache (no logits processors); engine: llmpress.engine (what `llmpress serve` runs);
    # auto: the engine when it supports the model, else lean.
    runner: str = "auto"
    threads: int | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ConfigError(f"unknown speed runner {self.runner!r}", f"use one of {', '.join(RUNNERS)}")
        if self.new_tokens < 2 or self.repeats < 1 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("speed config needs new_tokens >= 2, repeats >= 1 and batch sizes >= 1",
                              "fix the --new-tokens / --repeats / --batch-sizes options")


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _prompt_ids(tokenizer: Any, n: int, batch: int) -> Any:
    """Deterministic prompts: consecutive slices of the pydoc eval text, `n` tokens each."""
    import torch

    from llmpress.data import load_corpus

    text = " ".join(load_corpus("builtin:pydoc").eval)
    ids = tokenizer(text[: 40 * n * batch + 4000], add_special_tokens=False)["input_ids"]
    rows = [ids[i * n : (i + 1) * n] for i in range(batch)]
    if any(len(r) < n for r in rows):
        rows = [ids[:n]] * batch
    return torch.tensor(rows, dtype=torch.long)


def make_generate(model: Any, tokenizer: Any, runner: str) -> Callable[[Any, int], Any]:
    """A function (input_ids [B, P], new_tokens) -> generated ids [B, new_tokens], EOS ignored."""
    import torch

    if hasattr(model, "greedy_generate"):  # an exported model in its own runtime (engine/backends)
        def runtime(ids: Any, n: int) -> Any:
            return model.greedy_generate(ids, n)

        runtime.runner = model.runtime  # type: ignore[attr-defined]
        return runtime
    if runner == "hf":

        def hf(ids: Any, n: int) -> Any:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            return out[:, ids.shape[1] :]

        hf.runner = "hf"  # type: ignore[attr-defined]
        return hf
    if runner in ("engine", "auto"):
        try:
            from llmpress.engine import LLM, SamplingParams
        except ImportError as e:
            if runner == "auto":
                return make_generate(model, tokenizer, "lean")
            raise ConfigError("the engine runner is not available in this install", "use --runner lean") from e
        # No prefix caching: repeated timing runs over the same prompts must not skip their prefill.
        try:
            llm = LLM.from_model(model, tokenizer, enable_prefix_caching=False)
        except LlmpressError:
            if runner == "auto":  # a model the engine does not serve: time the lean loop instead
                return make_generate(model, tokenizer, "lean")
            raise

        def eng(ids: Any, n: int) -> Any:
            outs = llm.generate(ids.tolist(), SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
            return torch.tensor([o.token_ids for o in outs])

        eng.runner = "engine"  # type: ignore[attr-defined]
        return eng

    if not hasattr(model, "generate"):  # engine/lite.py's model: no forward with a KV cache of its own
        raise ConfigError("the lean runner needs transformers' model, and this one was built for the engine",
                          "use --runner engine (or hf)")
    from transformers import DynamicCache

    def lean(ids: Any, n: int) -> Any:
        cache = DynamicCache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks = [nxt]
        for _ in range(n - 1):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(nxt)
        return torch.cat(toks, dim=1)

    lean.runner = "lean"  # type: ignore[attr-defined]
    return lean


def measure_speed(model: Any, tokenizer: Any, config: SpeedConfig,
                  on_progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Time to first token and decode throughput for an already-loaded model."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = make_generate(model, tokenizer, config.runner)
    steps = (1 + len(config.batch_sizes) * 2) * (config.warmup + config.repeats)
    done = 0

    def tick(desc: str) -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, steps, desc)

    result: dict[str, Any] = {"runner": getattr(gen, "runner", config.runner), "prompt_tokens": config.prompt_tokens,
                              "new_tokens": config.new_tokens, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        ids = _prompt_ids(tokenizer, config.ttft_prompt_tokens, 1)
        times = []
        for i in range(config.warmup + config.repeats):
            t = time.perf_counter()
            gen(ids, 1)
            if i >= config.warmup:
                times.append(time.perf_counter() - t)
            tick("ttft")
        result["ttft_s"] = _summary(times)
        result["ttft_prompt_tokens"] = config.ttft_prompt_tokens
        decode: dict[str, Any] = {}
        for b in config.batch_sizes:
            ids = _prompt_ids(tokenizer, config.prompt_tokens, b)
            first, full = [], []
            for i in range(config.warmup + config.repeats):
                t = time.perf_counter()
                gen(ids, 1)
                t1 = time.perf_counter() - t
                tick(f"b{b} prefill")
                t = time.perf_counter()
                out = gen(ids, config.new_tokens)
                t2 = time.perf_counter() - t
                tick(f"b{b} decode")
                if out.shape != (b, config.new_tokens):
                    raise LlmpressError(f"runner {config.runner} returned {tuple(out.shape)} tokens, "
                                        f"expected {(b, config.new_tokens)}", "report this as a bug")
                if i >= config.warmup:
                    first.append(t1)
                    full.append(t2)
            # Decode rate excludes the prefill: (N-1) steps per sequence in (full - first) seconds.
            # The prefill time is the median of its repeats (less noisy than pairing runs); when noise
            # leaves less than 10 % of the run for decoding, the end-to-end rate is the honest number.
            prefill = statistics.median(first)
            rates = [b * (config.new_tokens - 1) / (f - prefill) if f - prefill > 0.1 * f else b * config.new_tokens / f
                     for f in full]
            e2e = [b * config.new_tokens / f for f in full]
            decode[f"b{b}"] = {"tok_s": _summary(rates), "e2e_tok_s": _summary(e2e)}
        result["decode"] = decode
    return result


def peak_rss_mb() -> float:
    """Peak resident set of this process's address space (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that across fork+exec, so a child would
    report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _worker(artifact_path: str, config_json: str) -> None:
    """Child-process entry: load, measure, print JSON lines (progress events, then the result)."""
    from llmpress.artifact import Artifact

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        cfg = SpeedConfig(**{k: tuple(v) if k == "batch_sizes" else v for k, v in json.loads(config_json).items()})
        rss0 = current_rss_mb()
        t = time.perf_counter()
        art = Artifact.open(artifact_path)
        if cfg.runner in ("engine", "auto"):  # the model `serve` runs, so load time and RSS are serving's
            from llmpress.engine.lite import load_for_engine

            model = load_for_engine(art)
        else:
            model = art.load_model()
        tok = art.load_tokenizer()
        load_s = time.perf_counter() - t
        rss_loaded = current_rss_mb()
        res = measure_speed(model, tok, cfg, lambda d, n, desc: emit({"event": "progress", "done": d,
                                                                        "total": n, "desc": desc}))
        res.update(load_s=load_s, rss_before_load_mb=rss0, rss_after_load_mb=rss_loaded, peak_rss_mb=peak_rss_mb())
        emit({"event": "result", "result": res})
    except LlmpressError as e:
        emit({"event": "error", "message": e.message, "fix": e.fix, "class": type(e).__name__})


def run_json_child(cmd: list[str], timeout: float, on_event: Callable[[dict[str, Any]], None],
                   env: dict[str, str] | None = None) -> tuple[int, str, bool]:
    """Run `cmd`, handing each JSON line it prints on stdout to `on_event`, until it exits or `timeout`
    seconds of wall clock have passed (then it is killed).

    Both pipes are drained by their own threads, so a child that writes megabytes to stderr cannot
    fill its pipe and hang on us, and the deadline holds even while the child prints nothing.
    Returns (exit code, last 64 KB of stderr, whether it timed out).
    """
    import threading

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    err_tail: list[str] = []

    def pump_stdout() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    def pump_stderr() -> None:
        size = 0
        for chunk in iter(lambda: proc.stderr.read(8192), ""):  # type: ignore[union-attr]
            err_tail.append(chunk)
            size += len(chunk)
            while size > 65536 and len(err_tail) > 1:
                size -= len(err_tail.pop(0))

    readers = [threading.Thread(target=f, daemon=True, name=f"speed-{f.__name__}") for f in (pump_stdout, pump_stderr)]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            break
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict):
            on_event(ev)
    if timed_out:
        proc.kill()
    try:
        code = proc.wait(timeout=max(deadline - time.monotonic(), 10.0))
    except subprocess.TimeoutExpired:  # stdout closed but the process lingers past the deadline
        proc.kill()
        code = proc.wait()
        timed_out = True
    for t in readers:
        t.join(timeout=5)
    return code, "".join(err_tail), timed_out


def measure_in_subprocess(artifact_path: Path, config: SpeedConfig,
                          on_progress: Callable[[int, int, str], None] | None = None,
                          timeout: float = 3600) -> dict[str, Any]:
    """Run `measure_speed` on a freshly loaded artifact in a child Python process (killed after `timeout` s)."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, "-m", "llmpress.evaluate.speed", str(artifact_path), json.dumps(asdict(config))]
    got: dict[str, Any] = {}

    def on_event(ev: dict[str, Any]) -> None:
        if ev.get("event") == "progress" and on_progress:
            on_progress(ev["done"], ev["total"], ev["desc"])
        elif ev.get("event") in ("result", "error"):
            got[ev["event"]] = ev

    code, stderr, timed_out = run_json_child(cmd, timeout, on_event, env)
    if "error" in got:
        raise LlmpressError(got["error"]["message"], got["error"].get("fix"))
    if timed_out:
        raise LlmpressError(f"speed measurement of {artifact_path} did not finish within {timeout:.0f} s; "
                            "the measuring process was killed",
                            "measure fewer batch sizes or tokens, or run `llmpress eval --no-speed`")
    if "result" not in got:
        tail = "\n".join(stderr.strip().splitlines()[-3:])
        raise LlmpressError(f"speed measurement of {artifact_path} failed (exit {code}): {tail}",
                            "run `llmpress eval --no-speed` to skip it, or report the error")
    return got["result"]["result"]


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
