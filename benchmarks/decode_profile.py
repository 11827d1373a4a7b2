"""Where a decode step's time goes: per-token time at batch 1 and 32 for fp32, int8-weight-only and int4 g32.

The engine (what `llmpress serve` runs) generates `--new-tokens` greedy tokens (EOS ignored) after
32-token prompts (slices of the pydoc eval text). Decode-only steps are split into

- weight matmuls (q/k/v, o, gate/up, down, lm_head),
- attention + KV-cache reads/writes,
- norms / rope / activations / residual adds (elementwise),
- the runner's input preparation (tensors from the sequences' block tables),
- sampling (`sampler.sample`),
- scheduler / engine Python overhead (step time minus the runner and the sampler),

with the runner's section timers (`ModelRunner.prof`, off by default at no cost). A second,
untimed run gives the tok/s the timers do not disturb. Writes `decode_profile_<label>.json` and
`.md` to benchmarks/results/ with `llmpress.hardware.machine_info()`.

    .venv/bin/python benchmarks/decode_profile.py --label before [--batches 1,32 --new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCHEMES = ("fp32", "int8-weight-only", "int4-weight-only:g32")
# display order and the runner sections each category sums
CATEGORIES = {
    "weight matmuls": ("matmul",),
    "attention + KV": ("attention", "kv_write"),
    "norms/rope/act": ("elementwise",),
    "fused layers": ("fused",),
    "runner prep": ("prep",),
    "sampling": ("sampling",),
    "scheduler/Python": ("overhead",),
}


def load_variant(src: Any, scheme: str) -> tuple[Any, Any]:
    """The model for `scheme`, quantized in memory from the float source (no artifact written)."""
    import torch

    from llmpress.compress.quantize import build_quantized, make_config

    if scheme == "fp32":
        return src.load_model(dtype=torch.float32).eval(), src.load_tokenizer()
    name, _, opt = scheme.partition(":")
    kw = {"group_size": int(opt[1:])} if opt.startswith("g") else {}
    q = build_quantized(src, make_config(name, **kw))
    return q.model, q.tokenizer


def profile_batch(llm: Any, prompts: list[list[int]], new_tokens: int, repeats: int) -> dict[str, Any]:
    """Untimed tok/s (median of `repeats`), then one timed run split into sections (ms per decode step)."""
    from llmpress.engine import SamplingParams
    from llmpress.engine import llm_engine as le

    eng = llm.engine
    runner = eng.runner
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    llm.generate(prompts, params)  # warm-up
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        llm.generate(prompts, params)
        rates.append(len(prompts) * new_tokens / (time.perf_counter() - t))

    # timed run: wrap step, run and sample for decode-only steps
    acc: dict[str, float] = {}
    state = {"decode": False, "steps": 0}
    orig_run, orig_step, orig_sample = runner.run, eng.step, le.sample

    def run(items: Any, num_decode: int, *a: Any, **k: Any) -> Any:
        state["decode"] = num_decode == len(items)
        runner.prof = {} if state["decode"] else None
        t = time.perf_counter()
        out = orig_run(items, num_decode, *a, **k)
        state["run"] = time.perf_counter() - t
        if runner.prof is not None:
            state["sections"] = dict(runner.prof)
        runner.prof = None
        return out

    def sample(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        out = orig_sample(*a, **k)
        state["sample"] = time.perf_counter() - t
        return out

    def step() -> Any:
        state["decode"], state["run"], state["sample"] = False, 0.0, 0.0
        t = time.perf_counter()
        out = orig_step()
        total = time.perf_counter() - t
        if state["decode"]:
            state["steps"] += 1
            secs = {k: v for k, v in state["sections"].items() if not k.startswith("_")}
            secs["sampling"] = state["sample"]
            secs["overhead"] = total - state["run"] - state["sample"] + (state["run"] - sum(
                v for k, v in state["sections"].items() if not k.startswith("_")))
            secs["total"] = total
            for k, v in secs.items():
                acc[k] = acc.get(k, 0.0) + v
        return out

    runner.run, eng.step, le.sample = run, step, sample
    try:
        llm.generate(prompts, params)
    finally:
        runner.run, eng.step, le.sample = orig_run, orig_step, orig_sample
        del runner.__dict__["run"], eng.__dict__["step"]
    n = max(state["steps"], 1)
    ms = {k: 1000 * v / n for k, v in acc.items()}
    cats = {c: sum(ms.get(s, 0.0) for s in secs) for c, secs in CATEGORIES.items()}
    return {"batch": len(prompts), "tok_s": statistics.median(rates), "tok_s_runs": rates,
            "decode_steps_timed": state["steps"], "step_ms": ms.get("total", 0.0),
            "per_token_ms": ms.get("total", 0.0) / len(prompts), "sections_ms": ms, "categories_ms": cats}


def q8_quality(src: Any, max_tokens: int) -> list[dict[str, Any]]:
    """The VNNI gate: perplexity of int8-weight-only through the scheme's current path (float GEMM on the
    dequantized weight for long inputs), through our kernel with float32 activations, and through the
    kernel with int8 activations (VNNI), every matmul forced onto the kernel."""
    from llmpress.compress.quantize import kernels, layers
    from llmpress.data import load_corpus
    from llmpress.evaluate.quality import perplexity

    model, tok = load_variant(src, "int8-weight-only")
    texts = load_corpus("builtin:pydoc").eval
    rows = []
    cls = layers.Int8WeightOnlyLinear
    kern = kernels.get()
    orig = cls.forward
    on = kernels.q8_min_rows() or 8

    def through_kernel(q8: int, bf16: int = 0) -> Any:
        def forward(self: Any, x: Any) -> Any:  # every row count on the kernel, as the fused decoder calls it
            y = kern.int8_linear(x.reshape(-1, x.shape[-1]).float().contiguous(), self.qweight, self.scales, q8,
                                 bf16)
            return (y if self.bias is None else y + self.bias).reshape(*x.shape[:-1], -1)
        return forward

    bf = kernels.bf16a_min_rows() or 8
    paths = [("current path", orig), ("kernel, float32 activations", through_kernel(0)),
             (f"kernel, int8 activations (VNNI) from {on} rows", through_kernel(on)),
             (f"kernel, bfloat16 activations (AVX512-BF16) from {bf} rows", through_kernel(0, bf))]
    for label, fwd in paths:
        cls.forward = fwd
        t = time.perf_counter()
        try:
            q = perplexity(model, tok, texts, max_tokens=max_tokens)
        finally:
            cls.forward = orig
        rows.append({"path": label, "perplexity": q["perplexity"], "tokens": q["tokens"],
                     "seconds": time.perf_counter() - t})
        print(rows[-1], flush=True)
    base = rows[0]["perplexity"]
    for r in rows:
        r["delta_pct"] = 100 * (r["perplexity"] / base - 1)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--label", default="before", help="results file suffix: decode_profile_<label>.*")
    ap.add_argument("--note", default="", help="a line for the markdown (e.g. 'machine shared, noisy')")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--quality", action="store_true",
                    help="only the activation-precision gate: int8-weight-only perplexity with float32, int8 (VNNI) and bf16 activations")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 gives steadier numbers on a contended machine")
    args = ap.parse_args()

    import torch

    from llmpress.engine import LLM
    from llmpress.evaluate.speed import _prompt_ids
    from llmpress.hardware import benchmark_record, machine_summary
    from llmpress.report.tables import markdown_table
    from llmpress.sources import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    src = resolve(args.model)
    if args.quality:
        qrows = q8_quality(src, args.eval_tokens)
        res = {"model": args.model, "eval_tokens": args.eval_tokens, **benchmark_record(sys.argv), "rows": qrows}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "decode_profile_q8_quality.json").write_text(json.dumps(res, indent=2))
        md = [f"# Activation-precision quality gate (VNNI int8, AVX512-BF16): int8-weight-only {args.model}", "",
              f"Perplexity on {qrows[0]['tokens']} builtin:pydoc eval tokens (window 512, stride 256); gate: "
              "within 0.1 % of the current path.", "",
              markdown_table(["path", "perplexity", "Δ %", "seconds"],
                             [[r["path"], r["perplexity"], r["delta_pct"], r["seconds"]] for r in qrows], digits=4)]
        (out / "decode_profile_q8_quality.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for scheme in args.schemes.split(","):
        model, tok = load_variant(src, scheme)
        llm = LLM.from_model(model, tok, enable_prefix_caching=False)
        fast = getattr(llm.engine.runner, "fast_path", None)
        for b in batches:
            prompts = _prompt_ids(tok, 32, b).tolist()
            r = profile_batch(llm, prompts, args.new_tokens, args.repeats)
            r["scheme"] = scheme
            r["fast_path"] = getattr(fast, "name", None) if fast is not None else None
            rows.append(r)
            print(f"{scheme} b{b}: {r['tok_s']:.1f} tok/s, step {r['step_ms']:.2f} ms: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r["categories_ms"].items()), flush=True)
        del llm, model
    result = {"model": args.model, "new_tokens": args.new_tokens, "prompt_tokens": 32, "repeats": args.repeats,
              "label": args.label, "note": args.note, **benchmark_record(sys.argv), "torch_threads": torch.get_num_threads(),
              "seconds": time.perf_counter() - t0, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"decode_profile_{args.label}.json").write_text(json.dumps(result, indent=2))
    cats = list(CATEGORIES)
    headers = ["scheme", "batch", "tok/s (untimed)", "ms/step (timed)", "ms/token", *[f"{c} ms" for c in cats]]
    table = [[r["scheme"], r["batch"], r["tok_s"], r["step_ms"], r["per_token_ms"],
              *[r["categories_ms"][c] for c in cats]] for r in rows]
    m = result["machine"]
    md = [f"# Decode profile ({args.label}): {args.model}", "",
          f"{machine_summary(m)}; `{result['command']}`. 32-token prompts, {args.new_tokens} new tokens greedy (EOS ignored); "
          f"tok/s is the median of {args.repeats} untimed runs (prefill included); the split is one run with "
          "the runner's section timers, ms per decode-only step. 'fused layers' is the fast path's whole "
          "per-layer op (matmuls + attention + norms in one C++ call), when it runs.", ""]
    if args.note:
        md += [f"Note: {args.note}", ""]
    md.append(markdown_table(headers, table))
    (out / f"decode_profile_{args.label}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
