"""gguf: one `model.gguf` (llama.cpp's format) written with the `gguf` package, plus tokenizer files.

Precisions: f32, f16, q8_0, q4_0, q4_1. From a float source the `gguf` package's reference
quantizers make the blocks (as llama.cpp's converter does). From an llmpress
`int4-weight-only` artifact with group size 32, q4_1 is written *without re-quantizing*:
its storage (code * scale + min, scale/min f16 per 32 inputs) is exactly Q4_1's block
(d * q + m), so only the nibbles are repacked (ggml keeps element j and j+16 in one byte);
its int8 per-row head becomes Q8_0 with the same codes (the scale rounded to f16).
Embedding and head are Q8_0 in every q4 file, as llmpress's int4 keeps them in int8.
Llama q/k rows are permuted to ggml's rotary layout, as llama.cpp's converter does.
The tokenizer (byte-level BPE) goes into the file's metadata so llama.cpp needs nothing else;
the Hugging Face tokenizer files are kept beside it for llmpress.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmpress.artifact import Artifact
from llmpress.export.base import ExportConfig, ExportError, ExportFormat, check_source, register_format
from llmpress.export.verify import compare, count_source_params, manifest_stub

GGUF_FILE = "model.gguf"
PRECISIONS = ("f32", "f16", "q8_0", "q4_0", "q4_1")
ALIASES = {"fp32": "f32", "fp16": "f16", "int8": "q8_0", "int4": "q4_1"}
ARCHITECTURES = ("LlamaForCausalLM",)


@dataclass
class GgufConfig(ExportConfig):
    precision: str = "f32"


def _qtypes() -> dict[str, Any]:
    from gguf import GGMLQuantizationType as Q

    return {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}


def _file_type(precision: str) -> int:
    from gguf import LlamaFileType as F

    return int({"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0,
                "q4_1": F.MOSTLY_Q4_1}[precision])


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k row order -> ggml's interleaved pairs (llama.cpp's `LlamaModel.permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def q4_1_from_codes(codes: np.ndarray, scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """llmpress int4 g32 (codes [out, in] 0..15, scales/mins f16 [out, in/32]) -> Q4_1 bytes [out, in/32*20]."""
    out, k = codes.shape
    nb = k // 32
    b = codes.reshape(out, nb, 32).astype(np.uint8)
    qs = (b[..., :16] | (b[..., 16:] << 4)).astype(np.uint8)
    d = scales.astype(np.float16).reshape(out, nb, 1).view(np.uint8)
    m = mins.astype(np.float16).reshape(out, nb, 1).view(np.uint8)
    return np.concatenate([d, m, qs], axis=-1).reshape(out, nb * 20)


def q8_0_from_codes(codes: np.ndarray, row_scales: np.ndarray) -> np.ndarray:
    """int8 per-row codes [out, in] with scales [out] -> Q8_0 bytes (same codes, scale as f16 per 32)."""
    out, k = codes.shape
    nb = k // 32
    d = np.repeat(row_scales.astype(np.float16).reshape(out, 1, 1), nb, axis=1).view(np.uint8)
    qs = codes.astype(np.int8).reshape(out, nb, 32).view(np.uint8)
    return np.concatenate([d, qs], axis=-1).reshape(out, nb * 34)


# -- source tensors ------------------------------------------------------------------------------
class _Tensors:
    """The source's tensors by HF name: float arrays, or (for an int4 g32 artifact) stored codes."""

    def __init__(self, src: Artifact) -> None:
        from safetensors.numpy import load_file

        self.raw: dict[str, np.ndarray] = {}
        for f in sorted(src.path.glob("*.safetensors")):
            self.raw.update(load_file(str(f)))
        q = src.manifest.extra.get("quantization") if src.manifest.loader == "quantized" else None
        self.quant = q
        self.modules: dict[str, dict[str, Any]] = (q or {}).get("modules", {})
        for key, target in ((q or {}).get("aliases") or {}).items():
            self.raw.setdefault(key, self.raw[target])

    def kind(self, module: str) -> str | None:
        return (self.modules.get(module) or {}).get("kind")

    def float(self, module: str) -> np.ndarray:
        """A module's weight as float32 (dequantized when stored quantized)."""
        from llmpress.compress.quantize.layers import int4_dequantize, unpack_nibbles

        kind = self.kind(module)
        if kind is None:
            return self.raw[f"{module}.weight"].astype(np.float32)
        import torch

        if kind == "int4wo":
            g = int(self.modules[module]["group_size"])
            codes = unpack_nibbles(torch.from_numpy(self.raw[f"{module}.qweight"]))
            return int4_dequantize(codes, torch.from_numpy(self.raw[f"{module}.scales"]).float(),
                                   torch.from_numpy(self.raw[f"{module}.mins"]).float(), g).numpy()
        if kind in ("int8wo", "int8emb"):
            return self.raw[f"{module}.qweight"].astype(np.float32) * self.raw[f"{module}.scales"][:, None]
        raise ExportError(f"layer {module} is stored as {kind!r}, which has no GGUF mapping",
                          "export the float parent of this artifact")


def _check_quantized(t: _Tensors, precision: str) -> None:
    if t.quant is None:
        return
    scheme = t.quant.get("scheme")
    g = (t.quant.get("params") or {}).get("group_size")
    if scheme != "int4-weight-only" or precision != "q4_1" or g != 32:
        raise ExportError(f"a {scheme} artifact (group {g}) maps onto GGUF without re-quantizing only as q4_1 "
                          "from int4-weight-only with group size 32",
                          "use --precision q4_1 on an int4 --group-size 32 artifact, or export the float parent")


def _config(cfg: dict[str, Any]) -> dict[str, Any]:
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ExportError(f"GGUF export handles {', '.join(ARCHITECTURES)}; this model is {arch}",
                          "export it to onnx instead")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ExportError("this Llama has attention / MLP biases, which llama.cpp's llama graph does not read",
                          "export it to onnx instead")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    if (rope.get("rope_type") not in (None, "default")) or (scaling and scaling.get("rope_type") != "default"):
        raise ExportError("rope scaling is not written by this GGUF exporter", "export it to onnx instead")
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    if heads % kv or head_dim % 2:
        raise ExportError(f"{heads} query heads for {kv} kv heads (head dim {head_dim}) is not a GQA layout "
                          "llama.cpp runs", "prune heads by whole groups (llmpress prune keeps them even)")
    return {"heads": heads, "kv_heads": kv, "head_dim": head_dim,
            "theta": float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)}


# -- tokenizer metadata --------------------------------------------------------------------------
def _tokenizer_metadata(w: Any, tok: Any, vocab_size: int) -> str:
    """tokens / types / merges of a byte-level BPE tokenizer; returns the pre-tokenizer name."""
    from gguf import TokenType

    data = json.loads(tok.backend_tokenizer.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"the tokenizer is {model.get('type')!r}, not byte-level BPE", "export it to onnx instead")
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in data.get("added_tokens") or []}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        a = added.get(i)
        types.append(TokenType.NORMAL if a is None else TokenType.CONTROL if a.get("special") else
                     TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    pre = data.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else [pre.get("type")]
    # llama.cpp's pre-tokenizer names: "smollm" = digits one by one + GPT-2's regex, "gpt-2" = GPT-2's regex
    name = "smollm" if kinds == ["Digits", "ByteLevel"] else "gpt-2" if kinds == ["ByteLevel"] else "default"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(name)
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges(merges)
    for fn, v in ((w.add_bos_token_id, tok.bos_token_id), (w.add_eos_token_id, tok.eos_token_id),
                  (w.add_pad_token_id, tok.pad_token_id), (w.add_unk_token_id, tok.unk_token_id)):
        if v is not None:
            fn(int(v))
    w.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    w.add_add_space_prefix(False)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    return name


# -- the writer ----------------------------------------------------------------------------------
def write_gguf(src: Artifact, config: GgufConfig, dest: Path, progress: Any = None) -> dict[str, Any]:
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    cfg = check_source(src)
    shape = _config(cfg)
    t = _Tensors(src)
    _check_quantized(t, config.precision)
    qt = _qtypes()[config.precision]
    big = Q.Q8_0 if config.precision.startswith("q") else qt  # embedding / head type
    tok = src.load_tokenizer()
    vocab = int(cfg["vocab_size"])
    L = int(cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(dest / GGUF_FILE), "llama")
    w.add_name(src.name)
    w.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_block_count(L)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    if shape["head_dim"] * shape["heads"] != int(cfg["hidden_size"]):
        w.add_key_length(shape["head_dim"])
        w.add_value_length(shape["head_dim"])
    w.add_rope_freq_base(shape["theta"])
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(shape["head_dim"])
    w.add_file_type(_file_type(config.precision))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pre = _tokenizer_metadata(w, tok, vocab)

    kinds: dict[str, str] = {}
    exact = 0

    def put(name: str, module: str, ttype: Any, rows_perm: int | None = None) -> None:
        nonlocal exact
        kind = t.kind(module)
        if kind == "int4wo" and ttype == Q.Q4_1:  # stored codes -> Q4_1 blocks, no re-quantization
            import torch

            from llmpress.compress.quantize.layers import unpack_nibbles

            codes = unpack_nibbles(torch.from_numpy(t.raw[f"{module}.qweight"])).numpy()
            sc, mn = t.raw[f"{module}.scales"], t.raw[f"{module}.mins"]
            if rows_perm:
                codes, sc, mn = (permute_rows(a, rows_perm) for a in (codes, sc, mn))
            w.add_tensor(name, q4_1_from_codes(codes, sc, mn), raw_dtype=Q.Q4_1)
            exact += 1
        elif kind in ("int8wo", "int8emb") and ttype == Q.Q8_0:
            codes, sc = t.raw[f"{module}.qweight"], t.raw[f"{module}.scales"]
            if rows_perm:
                codes, sc = permute_rows(codes, rows_perm), permute_rows(sc, rows_perm)
            w.add_tensor(name, q8_0_from_codes(codes, sc), raw_dtype=Q.Q8_0)
            exact += 1
        else:
            a = t.float(module)
            if rows_perm:
                a = permute_rows(a, rows_perm)
            if a.ndim == 1 or ttype == Q.F32:
                w.add_tensor(name, np.ascontiguousarray(a, np.float32))
            elif ttype == Q.F16:
                w.add_tensor(name, a.astype(np.float16))
            else:
                w.add_tensor(name, quants.quantize(np.ascontiguousarray(a, np.float32), ttype), raw_dtype=ttype)
        kinds[name] = ttype.name

    def norm(name: str, key: str) -> None:
        w.add_tensor(name, t.raw[key].astype(np.float32))
        kinds[name] = "F32"

    task = progress.add_task(f"gguf {config.precision}: write", total=L + 2) if progress else None
    put("token_embd.weight", "model.embed_tokens", big)
    tied = _same(t, "lm_head", "model.embed_tokens") or ("lm_head.weight" not in t.raw
                                                          and "lm_head.qweight" not in t.raw)
    if not tied:
        put("output.weight", "lm_head", big)
    norm("output_norm.weight", "model.norm.weight")
    if progress is not None:
        progress.advance(task, 2)
    for i in range(L):
        p = f"model.layers.{i}"
        norm(f"blk.{i}.attn_norm.weight", f"{p}.input_layernorm.weight")
        norm(f"blk.{i}.ffn_norm.weight", f"{p}.post_attention_layernorm.weight")
        put(f"blk.{i}.attn_q.weight", f"{p}.self_attn.q_proj", qt, shape["heads"])
        put(f"blk.{i}.attn_k.weight", f"{p}.self_attn.k_proj", qt, shape["kv_heads"])
        put(f"blk.{i}.attn_v.weight", f"{p}.self_attn.v_proj", qt)
        put(f"blk.{i}.attn_output.weight", f"{p}.self_attn.o_proj", qt)
        put(f"blk.{i}.ffn_gate.weight", f"{p}.mlp.gate_proj", qt)
        put(f"blk.{i}.ffn_up.weight", f"{p}.mlp.up_proj", qt)
        put(f"blk.{i}.ffn_down.weight", f"{p}.mlp.down_proj", qt)
        if progress is not None:
            progress.advance(task)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok.save_pretrained(dest)
    from collections import Counter

    return {"file": GGUF_FILE, "gguf_type": config.precision, "tokenizer_pre": pre, "tied_embeddings": tied,
            "tensors_mapped_without_requantizing": exact,
            "tensor_types": dict(Counter(kinds.values())),
            "from_quantized": (t.quant or {}).get("scheme"),
            "params_count": int((src.manifest.metrics.get("size") or {}).get("params") or 0)
            or count_source_params(src)}


def _same(t: _Tensors, a: str, b: str) -> bool:
    for suffix in (".weight", ".qweight"):
        if a + suffix in t.raw and b + suffix in t.raw:
            return t.raw[a + suffix] is t.raw[b + suffix] or np.array_equal(t.raw[a + suffix], t.raw[b + suffix])
    return False


def verify_gguf(dest: Path, src: Artifact, config: GgufConfig, facts: dict[str, Any]) -> dict[str, Any]:
    from llmpress.engine.backends.llamacpp import load_gguf_runtime

    return compare(load_gguf_runtime(dest, manifest_stub(facts)), src, exact=config.precision == "f32")


register_format(ExportFormat(
    "gguf", GgufConfig, write_gguf, verify_gguf, PRECISIONS, "gguf",
    "model.gguf for llama.cpp / llama-cpp-python / ollama (f32, f16, q8_0, q4_0, q4_1; q4_1 maps int4 g32 exactly)",
    requires=("gguf",), extra="gguf", aliases=ALIASES))
