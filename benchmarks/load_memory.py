"""Where the engine's RSS after load goes, per precision: Python + torch, llmpress's imports, the tokenizer,
the weights, the engine (KV cache, fused layouts), and the KV pages actually resident.

Each variant loads in its own fresh process exactly as `llmpress serve` does (engine/tokenizer.py's
tokenizer, engine/lite.py's model, the engine with its default 256 MiB KV cache), and RSS is read after every stage;
the stage rows are increments, so they add up to the total. The KV cache is mapped lazily (pages become
resident as requests write them), so "RSS - KV" subtracts the KV bytes the kernel reports resident
(mincore), not the budget. Also: the peak RSS during load (VmHWM), the bytes of the model's own tensors,
the float32 bytes among the weights of quantized layers (0 when nothing was materialised in float),
and RSS after one short generate (everything the first requests fault in). The floor row loads only
torch, the Rust tokenizer, the stored weights and our kernels in another fresh process: the least a torch
process serving the artifact holds (no transformers at all, no engine).

    .venv/bin/python benchmarks/load_memory.py [--model builtin:smollm2-135m]
        [--variants fp32,int8-weight-only,int4-weight-only:g32] [--threads 2]

A variant is "fp32", a quantize scheme spec as in benchmarks/peers.py ("int4-weight-only:g32"), or the
path of an existing artifact directory. Writes results/load_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STAGES = ("python", "torch", "llmpress imports", "tokenizer", "weights", "engine")


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(path: str, threads: int) -> dict[str, Any]:
    """Load the artifact at `path` stage by stage in this (fresh) process; RSS in MiB after each stage."""
    rss = {"python": _status("VmRSS")}
    import torch

    torch.set_num_threads(threads)
    rss["torch"] = _status("VmRSS")
    from llmpress.artifact import Artifact
    from llmpress.engine import LLM, SamplingParams, tokenizer
    from llmpress.engine.lite import load_for_engine

    art = Artifact.open(Path(path))
    rss["llmpress imports"] = _status("VmRSS")
    tok = tokenizer.load_for_engine(art)  # what `llmpress serve` tokenizes with (engine/tokenizer.py)
    rss["tokenizer"] = _status("VmRSS")
    t = time.perf_counter()
    model = load_for_engine(art)  # what `llmpress serve` runs: engine/lite.py, or transformers when it cannot
    rss["weights"] = _status("VmRSS")
    llm = LLM.from_model(model, tok)
    load_s = time.perf_counter() - t
    rss["engine"] = _status("VmRSS")
    peak = _status("VmHWM")
    runner = llm.engine.runner
    measure_kv = getattr(runner, "kv_resident_mb", None)  # absent before this benchmark existed
    kv = measure_kv() if measure_kv is not None else None
    storages: dict[int, int] = {}
    f32_quant = 0
    from llmpress.compress.quantize.layers import QuantModule

    quant_mods = [m for m in model.modules() if isinstance(m, QuantModule)]
    for tns in [*model.parameters(), *model.buffers()]:
        storages[tns.untyped_storage().data_ptr()] = tns.untyped_storage().nbytes()
    for m in quant_mods:  # float32 tensors of at least a quantized weight's size: a float copy of the weight
        for tns in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            if tns.dtype == torch.float32 and tns.dim() >= 2:
                f32_quant += tns.numel() * 4
    llm.generate([[1] * 32], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    kv_gen = measure_kv() if measure_kv is not None else None
    total = rss["engine"]
    return {"rss_mb": rss, "stage_mb": {s: rss[s] - (rss[STAGES[i - 1]] if i else 0) for i, s in enumerate(STAGES)},
            "rss_after_load_mb": total, "kv_budget_mb": runner.kv_cache_mb, "kv_resident_mb": kv,
            "rss_minus_kv_mb": None if kv is None else total - kv, "peak_load_mb": peak,
            "model_tensors_mb": sum(storages.values()) / 2**20, "quantized_layers": len(quant_mods),
            "float32_in_quantized_layers_mb": f32_quant / 2**20, "load_s": load_s,
            "rss_after_generate_mb": _status("VmRSS"), "kv_resident_after_generate_mb": kv_gen,
            "fast_path": runner.fast_path is not None, "model_class": type(model).__name__,
            "tokenizer_class": type(tok).__name__}


def floor_worker(path: str) -> float:
    """RSS of the least a torch process serving this artifact holds: torch, the Rust tokenizer, the stored
    weights (one buffer each) and our kernels, without transformers: what a leaner engine could reach."""
    import tokenizers
    import torch  # noqa: F401

    from llmpress.compress.quantize import kernels
    from llmpress.compress.quantize.storage import read_weights

    tok = tokenizers.Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    weights = read_weights(Path(path) / "model.safetensors")
    kernels.get()
    assert tok is not None and weights
    return _status("VmRSS")


def variant_path(spec: str, src: Any) -> Path:
    if Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    if spec == "fp32":
        return src.path
    from llmpress.compress.quantize import make_config, quantize

    name, _, opt = spec.partition(":")
    kw: dict[str, Any] = {}
    for o in filter(None, opt.split(",")):
        if o.startswith("g"):
            kw["group_size"] = int(o[1:])
    return quantize(src, make_config(name, **kw), name=f"load-memory-{spec.replace(':', '-')}").path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--variants", default="fp32,int8-weight-only,int4-weight-only:g32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = floor_worker(args.worker) if args.floor else worker(args.worker, args.threads)
        print("RESULT " + json.dumps(res), flush=True)
        return

    from llmpress.hardware import benchmark_record, machine_summary
    from llmpress.report.tables import markdown_table
    from llmpress.sources import resolve

    src = resolve(args.model)
    rows: list[dict[str, Any]] = []
    for spec in args.variants.split(","):
        path = variant_path(spec, src)
        print(f"{spec} ({path}) ...", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        p = subprocess.run([sys.executable, __file__, "--worker", str(path), "--threads", str(args.threads)],
                           capture_output=True, text=True, env=env, timeout=1800)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        r = json.loads(line[7:]) if line else {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
        if "error" not in r and (path / "tokenizer.json").exists():
            p = subprocess.run([sys.executable, __file__, "--worker", str(path), "--floor"], capture_output=True,
                               text=True, env=env, timeout=600)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            r["floor_no_transformers_mb"] = json.loads(line[7:]) if line else None
        r["variant"] = spec
        rows.append(r)
        print(f"  {json.dumps(r)}", flush=True)
    result = {"model": args.model, **benchmark_record(sys.argv), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_memory.json").write_text(json.dumps(result, indent=2))
    ok = [r for r in rows if "error" not in r]
    headers = ["MiB", *[r["variant"] for r in ok]]
    table = [[f"+ {s}", *[r["stage_mb"][s] for r in ok]] for s in STAGES]
    for key, label in (("rss_after_load_mb", "RSS after load"), ("kv_budget_mb", "KV budget (mapped)"),
                       ("kv_resident_mb", "KV resident after load"), ("rss_minus_kv_mb", "RSS - KV resident"),
                       ("peak_load_mb", "peak RSS during load"), ("model_tensors_mb", "model tensors"),
                       ("float32_in_quantized_layers_mb", "float32 weights in quantized layers"),
                       ("rss_after_generate_mb", "RSS after a 32+16-token generate"),
                       ("kv_resident_after_generate_mb", "KV resident after it"),
                       ("model_class", "model class served"), ("tokenizer_class", "tokenizer class"),
                       ("floor_no_transformers_mb", "floor: torch + Rust tokenizer + weights + kernels")):
        table.append([label, *[r.get(key) for r in ok]])
    md = [f"# RSS after load: {args.model}", "", machine_summary(result["machine"]) + f" `{result['command']}`", "",
          "Stage rows are increments in a fresh process, in load order (their sum is RSS after load).", "",
          markdown_table(headers, table)]
    md += [f"- {r['variant']}: {r['error']}" for r in rows if "error" in r]
    (out / "load_memory.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
