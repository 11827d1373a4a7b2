"""int4 ONNX from llmpress's own int4 blocks: MatMulNBits weights that reproduce `int4-weight-only`.

llmpress's int4 stores w = code * scale + min per block of `g` inputs, with a *float* min. MatMulNBits
computes (code - zp) * scale. ONNX Runtime's CPU kernel accepts float zero points, but then skips
its packed kernels and dequantizes the whole B on every call (measured 27x slower on a 576x1536
layer), so the exact equivalent used here keeps the fast path: MatMulNBits with our codes, our
scales and zero point 0, plus the min term as a small float product,

    x @ W^T = MatMulNBits(x; codes, scales, zp=0) + (x @ E) @ M^T

where E [K, K/g] sums each block of x and M [N, K/g] holds the mins (fp16, as stored, cast to
fp32 once at load). That adds one K/g-wide product per layer (1/g of the weight's work) and
0.5 bit a weight on disk. B is our nibbles unchanged ([N][K/g][g/2], low nibble first, the same
order llmpress packs). The LM head is llmpress's int8 per-row head: stored as 8-bit blocks (code + 128,
zero point 128, the row scale in each block) that the tied embedding's GatherBlockQuantized reads, as
llmpress's tied int8 embedding does, and computed by a float MatMul over the same values (ONNX Runtime's
CPU MatMulNBits has no packed 8-bit kernel at accuracy level 1 and dequantized the whole head per token).

The graph layout (GroupQueryAttention, the fused qkv projection, KV cache, `genai_config.json`)
still comes from ONNX Runtime GenAI's model builder run at int4; only its MatMulNBits weights are
replaced.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmpress.artifact import Artifact
from llmpress.export.base import ExportError

SCHEME = "int4-weight-only"
_B_NAME = re.compile(r"^(?P<module>.+)\.MatMul\.weight_Q(?P<bits>[48])G(?P<block>\d+)$")
# the builder's module names -> the Hugging Face Linear(s) whose rows they concatenate
_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


@dataclass
class Int4Weights:
    """llmpress int4 blocks by Hugging Face module name, plus the int8 head, and the model they came from."""

    group: int
    linears: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # name -> (codes [N,K] u8, scales, mins [N,K/g])
    head: tuple[np.ndarray, np.ndarray] | None  # (codes [V,H] int8, row scales [V] f32)
    model: Any = None  # the llmpress int4 model itself: the reference the export must reproduce
    facts: dict[str, Any] = field(default_factory=dict)


def llmpress_int4(src: Artifact, group: int) -> Int4Weights:
    """The int4 g`group` blocks llmpress itself runs: quantized here from a float source (rtn, exactly as
    `llmpress quantize --scheme int4-weight-only`), or read from an int4-weight-only source artifact."""
    import torch

    from llmpress.compress.quantize.layers import (
        Int4WeightOnlyLinear,
        Int8WeightOnlyLinear,
        QuantModule,
        unpack_nibbles,
    )

    if src.manifest.loader == "quantized":
        q = src.manifest.extra.get("quantization") or {}
        g = (q.get("params") or {}).get("group_size")
        if q.get("scheme") != SCHEME or g != group:
            raise ExportError(f"{src.name} is a {q.get('scheme')} artifact (group {g}); int4 ONNX is written from "
                              f"{SCHEME} blocks of {group}",
                              f"export an {SCHEME} --group-size {group} artifact or its float parent")
        model = src.load_model()
        facts = {"from": f"{SCHEME} artifact {src.name} (its stored codes)", "method": (q.get("params") or {})
                 .get("method", "rtn")}
    elif src.manifest.loader == "hf":
        from llmpress.compress.quantize import make_config
        from llmpress.compress.quantize.base import build_quantized

        model = build_quantized(src, make_config(SCHEME, group_size=group)).model
        facts = {"from": f"llmpress {SCHEME} g{group} (rtn) of {src.name}", "method": "rtn"}
    else:
        raise ExportError(f"{src.name} is stored by llmpress's {src.manifest.loader!r} loader, which int4 ONNX "
                          "cannot read", f"export its float parent, or an {SCHEME} artifact")
    linears: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, Int4WeightOnlyLinear):
                linears[name] = (unpack_nibbles(m.qweight).numpy(), m.scales.float().numpy(), m.mins.float().numpy())
            elif isinstance(m, QuantModule) and m is not model.get_output_embeddings() and m.kind != "int8emb":
                raise ExportError(f"layer {name} is {m.kind!r}, which int4 ONNX does not map",
                                  f"export a plain {SCHEME} artifact or its float parent")
        head_mod = model.get_output_embeddings()
        head = None
        if isinstance(head_mod, Int8WeightOnlyLinear):
            head = (head_mod.qweight.numpy(), head_mod.scales.float().numpy())
        elif src.manifest.loader == "quantized":
            raise ExportError(f"{src.name} keeps its LM head in float (quantized without --lm-head); int4 ONNX "
                              "writes llmpress's int8 head", "quantize the float parent with the default int8 head")
    return Int4Weights(group, linears, head, model, facts)


def float_source_dir(weights: Int4Weights, src: Artifact, dest: Path) -> Path:
    """A Hugging Face float directory of the int4 model (dequantized) for the builder to read the layout from."""
    import torch
    from safetensors.torch import save_file

    from llmpress.compress.quantize.layers import Int4WeightOnlyLinear, Int8Embedding, Int8WeightOnlyLinear

    sd: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, m in weights.model.named_modules():
            pre = f"{name}." if name else ""
            if isinstance(m, Int4WeightOnlyLinear):
                sd[pre + "weight"] = m.dequantize()
            elif isinstance(m, (Int8WeightOnlyLinear, Int8Embedding)):
                sd[pre + "weight"] = m.qweight.float() * m.scales.float()[:, None]
            else:
                for p, t in m.named_parameters(recurse=False):
                    sd[pre + p] = t.detach().float()
            bias = getattr(m, "bias", None) if isinstance(m, (Int4WeightOnlyLinear, Int8WeightOnlyLinear)) else None
            if bias is not None:
                sd[pre + "bias"] = bias.detach().float()
    dest.mkdir(parents=True)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt"})
    for f in src.path.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "llmpress.json":
            shutil.copy2(f, dest / f.name)
    return dest


def _hf_modules(builder_module: str) -> list[str]:
    """`model.layers.3.attn.qkv_proj` -> its Hugging Face Linears, in row order."""
    if builder_module == "lm_head":
        return ["lm_head"]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(attn|mlp)\.(\w+)", builder_module)
    if not m:
        raise ExportError(f"the ONNX builder wrote a MatMulNBits for {builder_module!r}, which llmpress cannot map "
                          "to its int4 layers", "export this model at fp32, or to gguf")
    i, block, proj = m.groups()
    prefix = f"model.layers.{i}.{'self_attn' if block == 'attn' else 'mlp'}"
    return [f"{prefix}.{p}" for p in _PARTS.get(proj, (proj,))]


def _pack_int4(codes: np.ndarray, block: int) -> np.ndarray:
    """codes [N, K] 0..15 -> MatMulNBits B [N, K/block, block/2]: element 2j in the low nibble of byte j."""
    n, k = codes.shape
    c = codes.astype(np.uint8)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).reshape(n, k // block, block // 2)


def rewrite_matmulnbits(model_file: Path, weights: Int4Weights, progress: Any = None,
                        head_float: bool = True) -> dict[str, Any]:
    """Replace every MatMulNBits weight of the builder's int4 graph with llmpress's blocks (see module doc);
    `head_float`: compute the int8 head as a float MatMul over its values instead of 8-bit MatMulNBits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = weights.group
    model = onnx.load(str(model_file))  # with its external data
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def put(name: str, arr: np.ndarray) -> None:
        t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        if name in inits:
            inits[name].CopyFrom(t)
        else:
            graph.initializer.append(t)
            inits[name] = graph.initializer[-1]

    nodes = list(graph.node)
    targets = [n for n in nodes if n.op_type == "MatMulNBits"]
    task = progress.add_task("onnx int4: llmpress blocks into MatMulNBits", total=len(targets)) if progress else None
    out_nodes = []
    block_sums: dict[tuple[str, int], str] = {}
    used: set[str] = set()
    n4 = n8 = 0
    for node in nodes:
        if node.op_type != "MatMulNBits":
            out_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        m = _B_NAME.match(node.input[1])
        if not m or int(attrs["block_size"]) != g:
            raise ExportError(f"unexpected MatMulNBits weight {node.input[1]!r} (block {attrs['block_size']}) in the "
                              "builder's graph", "report this with the onnxruntime-genai version")
        mods = _hf_modules(m["module"])
        k, n = int(attrs["K"]), int(attrs["N"])
        if attrs["bits"] == 8:
            if mods != ["lm_head"] or weights.head is None:
                raise ExportError(f"the builder wrote {m['module']} in 8 bits; llmpress's int4 keeps only its head "
                                  "in int8", "report this with the onnxruntime-genai version")
            q, s = weights.head
            if q.shape != (n, k) or k % g:
                raise ExportError(f"the LM head is {q.shape}, the builder's {(n, k)} (block {g})",
                                  "report this with the model's config.json")
            put(node.input[1], (q.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // g, g))
            put(node.input[2], np.repeat(s.astype(np.float32)[:, None], k // g, axis=1))
            if len(node.input) < 4 or not node.input[3]:
                raise ExportError("the builder's int8 head has no zero points", "report this")
            put(node.input[3], np.full((n, k // g), 128, np.uint8))
            used.add("lm_head")
            n8 += 1
            # The blocks above stay for the tied embedding's GatherBlockQuantized. The head itself runs as a
            # float MatMul over the same values: ONNX Runtime's CPU MatMulNBits has no packed kernel for 8-bit
            # weights at accuracy level 1 and dequantized the whole 49152x576 head on every token (SmolLM2 int4
            # decoded at 10 tok/s, fp32 ONNX at 56). Same numbers, +4 bytes a head weight on disk.
            if not head_float:
                out_nodes.append(node)
            else:
                head_w = f"{m['module']}.MatMul.weight_f32"
                put(head_w, np.ascontiguousarray((q.astype(np.float32) * s.astype(np.float32)[:, None]).T))
                out_nodes.append(helper.make_node("MatMul", [node.input[0], head_w], [node.output[0]],
                                                  name=f"/llmpress/{m['module']}/MatMulF32"))
        else:
            missing = [x for x in mods if x not in weights.linears]
            if missing:
                raise ExportError(f"{', '.join(missing)} has no llmpress int4 blocks", "report this")
            codes = np.concatenate([weights.linears[x][0] for x in mods])
            scales = np.concatenate([weights.linears[x][1] for x in mods])
            mins = np.concatenate([weights.linears[x][2] for x in mods])
            if codes.shape != (n, k):
                raise ExportError(f"{m['module']} is {codes.shape} in llmpress, {(n, k)} in the builder's graph",
                                  "report this with the model's config.json")
            used.update(mods)
            put(node.input[1], _pack_int4(codes, g))
            put(node.input[2], scales.astype(np.float32))
            put(node.input[3], np.zeros((n, (k // g + 1) // 2), np.uint8))  # zero point 0, 4-bit packed
            base = m["module"]
            # block sums of the activations, shared by every projection of the same input
            key = (node.input[0], k)
            if key not in block_sums:
                ename = f"llmpress.block_sum.K{k}G{g}"
                if ename not in inits:
                    put(ename, np.kron(np.eye(k // g, dtype=np.float32), np.ones((g, 1), np.float32)))
                block_sums[key] = f"/llmpress/{base}/block_sum"
                out_nodes.append(helper.make_node("MatMul", [node.input[0], ename], [block_sums[key]],
                                                  name=f"/llmpress/{base}/BlockSum"))
            put(f"{base}.MatMul.weight_min", mins.T.astype(np.float16))
            main, y = f"/llmpress/{base}/codes_times_scales", node.output[0]
            node.output[0] = main
            out_nodes += [
                node,
                helper.make_node("Cast", [f"{base}.MatMul.weight_min"], [f"/llmpress/{base}/min_f32"],
                                 name=f"/llmpress/{base}/CastMin", to=TensorProto.FLOAT),
                helper.make_node("MatMul", [block_sums[key], f"/llmpress/{base}/min_f32"], [f"/llmpress/{base}/min_term"],
                                 name=f"/llmpress/{base}/MinTerm"),
                helper.make_node("Add", [main, f"/llmpress/{base}/min_term"], [y], name=f"/llmpress/{base}/AddMin"),
            ]
            n4 += 1
        if progress is not None:
            progress.advance(task)
    left = sorted(set(weights.linears) - used)
    if left:
        raise ExportError(f"the builder's graph has no MatMulNBits for {', '.join(left[:3])}",
                          "report this with the onnxruntime-genai version")
    del graph.node[:]
    graph.node.extend(out_nodes)
    data = model_file.with_name(model_file.name + ".data")
    model_file.unlink()
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(model_file), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return {"matmulnbits_int4": n4, "int8_head": n8, "head_matmul": "float" if head_float else "int8",
            "block_size": g,
            "zero_point": "0, with the float block minimums as (x @ E) @ M^T", **weights.facts}
