"""Quantized replacements for `nn.Linear` / `nn.Embedding` and the math that fills them.

Each module keeps the name of the layer it replaces (`q_proj`, `lm_head`, ...) and is called
as `module(x)`, so any runner works unchanged. Storage tensors are persistent buffers (what
goes into safetensors); kernel layouts are derived from them at load (`prepare()`), never
by re-quantizing float weights.

Written by hand, gpt-fast style, because torchao 0.18's CPU path wraps weights in tensor
subclasses that safetensors cannot store and whose packed layout depends on the build; here
the stored format is plain int8 / uint8 tensors + float scales that any reader can decode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmpress.errors import ConfigError

INT4_GROUP_SIZES = (32, 64, 128, 256)

# Decode-shaped calls (at most KERNEL_MAX_ROWS activation rows) go to a weight-only kernel;
# longer ones (prefill, perplexity) to a float GEMM on the dequantized weight, which is
# compute-bound and faster there. Two kernel sets:
# - ours (kernels.cpp, built on first use): float32 activations, exact float32 dot products, so
#   both paths compute the same function up to summation order;
# - aten's `_weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu` (fallback, LLMPRESS_KERNELS=aten):
#   vectorised only for bfloat16 activations (float32 falls back to a scalar loop, ~0.5 GMAC/s
#   here), so activations enter as bf16 and outputs leave as bf16, and the GEMM path rounds the
#   same way to stay the same function.
KERNEL_MAX_ROWS = 32
ATEN_MAX_ROWS = 8


def _kernels() -> Any:
    from llmpress.compress.quantize import kernels

    return kernels.get()


# -- quantization math -------------------------------------------------------------------
def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w ≈ q * s, q in [-127, 127]."""
    w = w.float()
    s = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q, s


def int4_group_params(w: torch.Tensor, group: int, search: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric per-group (scale, min) for 4 bits, rounded to the fp16 they are stored in.

    With `search`, each group's range is shrunk toward its centre by the factor (of 20 tried)
    that minimises the group's squared rounding error, as llama.cpp / AWQ do: clipping a rare
    extreme weight buys a finer grid for all the others.
    """
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    mn0, mx0 = wg.amin(-1), wg.amax(-1)

    def params(f: float) -> tuple[torch.Tensor, torch.Tensor]:
        c = (mx0 + mn0) / 2
        mn, mx = c + (mn0 - c) * f, c + (mx0 - c) * f
        return ((mx - mn) / 15.0).clamp(min=1e-6).half().float(), mn.half().float()

    best_s, best_m = params(1.0)
    if not search:
        return best_s, best_m
    best_err = torch.full_like(best_s, float("inf"))
    for f in torch.linspace(1.0, 0.6, 20).tolist():
        s, m = params(f)
        q = torch.round((wg - m[..., None]) / s[..., None]).clamp(0, 15)
        err = (q * s[..., None] + m[..., None] - wg).pow(2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s, best_m = torch.where(better, s, best_s), torch.where(better, m, best_m)
    return best_s, best_m


def int4_quantize(w: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int) -> torch.Tensor:
    """Integer codes 0..15 of `w` for per-group `scale` / `mn` ([n, k//group] each)."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    q = torch.round((wg - mn[..., None]) / scale[..., None]).clamp(0, 15)
    return q.reshape(n, k).to(torch.uint8)


def int4_dequantize(q: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int) -> torch.Tensor:
    n, k = q.shape
    return (q.float().reshape(n, k // group, group) * scale[..., None] + mn[..., None]).reshape(n, k)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[n, k] codes 0..15 -> [n, k/2] uint8; element 2j in the low nibble, 2j+1 in the high nibble."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    n, half = p.shape
    out = torch.empty(n, half * 2, dtype=torch.uint8)
    out[:, 0::2] = p & 0x0F
    out[:, 1::2] = p >> 4
    return out


def check_group(k: int, group: int, where: str) -> None:
    if group not in INT4_GROUP_SIZES:
        raise ConfigError(f"int4 group size {group} is not supported",
                          f"use one of {', '.join(map(str, INT4_GROUP_SIZES))}", param="group_size")
    if k % group:
        raise ConfigError(f"group size {group} does not divide the input width {k} of {where}",
                          "pick a group size that divides every layer's input width (e.g. 32 or 64)",
                          param="group_size")


def _flat(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    return x.reshape(-1, x.shape[-1]), x.shape[:-1]


class QuantModule(nn.Module):
    """Common interface: `kind` names the class in the manifest; `prepare()` builds kernel layouts."""

    kind = ""

    _released = False

    def prepare(self) -> None:  # noqa: B027 - optional hook
        pass

    def release_storage(self) -> None:  # noqa: B027 - optional hook
        """Free storage tensors the kernel layout has copied (after loading, to keep RSS honest)."""

    def spec(self) -> dict[str, Any]:
        return {}


# -- int8 weight-only --------------------------------------------------------------------
class Int8WeightOnlyLinear(QuantModule):
    """Storage: qweight int8 [out, in], scales float32 [out], bias. Kernel: aten._weight_int8pack_mm."""

    kind = "int8wo"

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.empty(out_features) if bias else None)
        self._scales_bf16: torch.Tensor | None = None
        self._kern: Any = None

    @classmethod
    def from_float(cls, lin: nn.Linear) -> Int8WeightOnlyLinear:
        m = cls(lin.in_features, lin.out_features, lin.bias is not None)
        m.qweight, m.scales = int8_per_channel(lin.weight.detach())
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def prepare(self) -> None:
        self._kern = _kernels() if self.in_features % 16 == 0 else None  # the kernel reads 16-wide
        self._scales_bf16 = self.scales.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._scales_bf16 is None:
            self.prepare()
        x2, lead = _flat(x)
        dt = x2.dtype
        if self._kern is not None:
            xf = x2.float()
            if xf.shape[0] <= KERNEL_MAX_ROWS:
                y = self._kern.int8_linear(xf, self.qweight, self.scales)
            else:
                y = F.linear(xf, self.qweight.float() * self.scales[:, None])
        else:
            xb = x2.to(torch.bfloat16).contiguous()
            if xb.shape[0] <= ATEN_MAX_ROWS:
                y = torch.ops.aten._weight_int8pack_mm(xb, self.qweight, self._scales_bf16).float()
            else:
                y = F.linear(xb.float(), self.qweight.float() * self.scales[:, None]).to(torch.bfloat16).float()
        if self.bias is not None:
            y = y + self.bias
        return y.to(dt).reshape(*lead, self.out_features)


class Int8Embedding(QuantModule):
    """Row-wise int8 embedding (the same tensors as a tied int8 lm_head): out = q[idx] * s[idx]."""

    kind = "int8emb"

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("qweight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(num_embeddings, dtype=torch.float32))

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> Int8Embedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        m.qweight, m.scales = int8_per_channel(emb.weight.detach())
        return m

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.qweight).float() * self.scales[idx].unsqueeze(-1)


# -- int4 weight-only --------------------------------------------------------------------
class Int4WeightOnlyLinear(QuantModule):
    """Storage: qweight uint8 [out, in/2] (two 4-bit codes a byte, low nibble first),
    scales / mins float16 [out, in/group]; w = code * scale + min.

    The CPU kernel's packed layout (`_convert_weight_to_int4pack_for_cpu`) depends on the
    machine's ISA, so it is built from the portable nibbles at `prepare()` (a repacking, not
    a re-quantization). Kernel: aten._weight_int4pack_mm_for_cpu, which computes
    (code - 8) * scale + zero, hence zero = min + 8 * scale.
    """

    kind = "int4wo"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 64) -> None:
        super().__init__()
        check_group(in_features, group_size, f"a {in_features}->{out_features} layer")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.empty(out_features, in_features // group_size, dtype=torch.float16))
        self.register_buffer("mins", torch.empty(out_features, in_features // group_size, dtype=torch.float16))
        self.register_buffer("bias", torch.empty(out_features) if bias else None)
        self._packed: torch.Tensor | None = None
        self._sz: Any = None  # ours: (scales, mins) float16; aten: [in/g, out, 2] bf16
        self._kern: Any = None

    def spec(self) -> dict[str, Any]:
        return {"group_size": self.group_size}

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group: int,
                   bias: torch.Tensor | None) -> Int4WeightOnlyLinear:
        out_f, in_f = codes.shape
        m = cls(in_f, out_f, bias is not None, group)
        m.qweight = pack_nibbles(codes)
        m.scales, m.mins = scale.half(), mn.half()
        if bias is not None:
            m.bias = bias.detach().float().clone()
        return m

    @classmethod
    def from_float(cls, lin: nn.Linear, group_size: int = 64, search: bool = True) -> Int4WeightOnlyLinear:
        check_group(lin.in_features, group_size, "a Linear layer")
        w = lin.weight.detach()
        scale, mn = int4_group_params(w, group_size, search)
        return cls.from_codes(int4_quantize(w, scale, mn, group_size), scale, mn, group_size, lin.bias)

    def dequantize(self) -> torch.Tensor:
        return int4_dequantize(unpack_nibbles(self.qweight), self.scales.float(), self.mins.float(), self.group_size)

    def prepare(self) -> None:
        self._kern = _kernels()
        if self._kern is not None:
            # ours reads the stored tensors themselves (nibbles + float16 scales / mins): no copy in memory
            self._packed = self.qweight.contiguous()
            self._sz = (self.scales.contiguous(), self.mins.contiguous())
            return
        codes = unpack_nibbles(self.qweight)
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 2)
        s, mn = self.scales.float(), self.mins.float()
        # [in/g, out, 2] in the activations' dtype (bf16, see KERNEL_MAX_ROWS)
        self._sz = torch.stack([s, mn + 8.0 * s], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self.prepare()
        assert self._sz is not None
        x2, lead = _flat(x)
        dt = x2.dtype
        if self._kern is not None:
            xf = x2.float()
            if xf.shape[0] <= KERNEL_MAX_ROWS:
                y = self._kern.int4_linear(xf, self._packed, self._sz[0], self._sz[1], self.group_size)
            else:
                y = F.linear(xf, self.dequantize())
        else:
            xb = x2.to(torch.bfloat16).contiguous()
            if xb.shape[0] <= ATEN_MAX_ROWS:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, self._packed, self.group_size, self._sz).float()
            else:
                y = F.linear(xb.float(), self.dequantize()).to(torch.bfloat16).float()
        if self.bias is not None:
            y = y + self.bias
        return y.to(dt).reshape(*lead, self.out_features)


# -- int8 dynamic (torch quantize_dynamic's fbgemm kernel) -----------------------------------
class Int8DynamicLinear(QuantModule):
    """Storage: qweight int8 [out, in], scales float32 [out] (per channel) or [1] (per tensor).

    At `prepare()` the stored ints become fbgemm packed params (`quantized.linear_prepack`), the
    same object `torch.ao.quantization.quantize_dynamic` builds; the forward is its kernel
    `quantized.linear_dynamic` (activations quantized per call, per tensor).
    """

    kind = "int8dyn"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, per_channel: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.per_channel = in_features, out_features, per_channel
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features if per_channel else 1, dtype=torch.float32))
        self.register_buffer("bias", torch.empty(out_features) if bias else None)
        self._packed: Any = None

    def spec(self) -> dict[str, Any]:
        return {"per_channel": self.per_channel}

    @classmethod
    def from_dynamic(cls, dq: nn.Module) -> Int8DynamicLinear:
        """From a module made by torch's quantize_dynamic: read back its int weights and scales."""
        qw = dq.weight()
        per_channel = qw.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        m = cls(dq.in_features, dq.out_features, dq.bias() is not None, per_channel)
        m.qweight = qw.int_repr().clone()
        if per_channel:
            if qw.q_per_channel_zero_points().abs().max() != 0:
                raise ConfigError("quantize_dynamic produced a non-zero weight zero point", "use a symmetric qconfig")
            m.scales = qw.q_per_channel_scales().float().clone()
        else:
            m.scales = torch.tensor([qw.q_scale()], dtype=torch.float32)
        if dq.bias() is not None:
            m.bias = dq.bias().detach().float().clone()
        return m

    def prepare(self) -> None:
        if self.per_channel:
            qw = torch._make_per_channel_quantized_tensor(
                self.qweight, self.scales.double(), torch.zeros(self.out_features, dtype=torch.long), 0)
        else:
            qw = torch._make_per_tensor_quantized_tensor(self.qweight, float(self.scales[0]), 0)
        self._packed = torch.ops.quantized.linear_prepack(qw, self.bias)

    def release_storage(self) -> None:
        if self._packed is None:
            self.prepare()
        self.qweight = torch.empty(0, dtype=torch.int8)
        self._released = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self.prepare()
        x2, lead = _flat(x)
        y = torch.ops.quantized.linear_dynamic(x2.float().contiguous(), self._packed, True)
        return y.to(x.dtype).reshape(*lead, self.out_features)


# -- int8 static (weights + activations) ----------------------------------------------------
class Int8StaticLinear(QuantModule):
    """Storage: qweight int8 [out, in] per-channel symmetric, scales float32 [out], act_scale
    float32 [1] (per-tensor symmetric, calibrated), smooth float32 [in] (SmoothQuant divisor,
    ones when off). y = int_mm(q(x / smooth), qweight^T) * act_scale * scales + bias.

    torch.ao's static flow (QuantStub / prepare / convert, quint8 tensors) does not trace HF
    decoder layers and is deprecated; torch._int_mm is the int8 GEMM it would call anyway.
    """

    kind = "int8static"

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32))
        self.register_buffer("act_scale", torch.ones(1, dtype=torch.float32))
        self.register_buffer("smooth", torch.ones(in_features, dtype=torch.float32))
        self.register_buffer("bias", torch.empty(out_features) if bias else None)
        self._wt: torch.Tensor | None = None
        self._inv: torch.Tensor | None = None

    @classmethod
    def from_float(cls, lin: nn.Linear, act_absmax: float, smooth: torch.Tensor | None = None) -> Int8StaticLinear:
        """`act_absmax` is the calibrated max |x / smooth| over the calibration activations."""
        m = cls(lin.in_features, lin.out_features, lin.bias is not None)
        w = lin.weight.detach().float()
        if smooth is not None:
            m.smooth = smooth.float().clone()
            w = w * m.smooth[None, :]
        m.qweight, m.scales = int8_per_channel(w)
        m.act_scale = torch.tensor([max(act_absmax, 1e-8) / 127.0], dtype=torch.float32)
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def prepare(self) -> None:
        self._wt = self.qweight.t()  # a view: _int_mm reads the [out, in] layout directly, no copy
        self._inv = (1.0 / (self.smooth * self.act_scale)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._wt is None:
            self.prepare()
        x2, lead = _flat(x)
        xq = torch.round(x2.float() * self._inv).clamp_(-127, 127).to(torch.int8)
        y = torch._int_mm(xq, self._wt)
        y = y.float() * (self.act_scale * self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*lead, self.out_features)


KINDS: dict[str, type[QuantModule]] = {c.kind: c for c in
                                       (Int8WeightOnlyLinear, Int8Embedding, Int4WeightOnlyLinear,
                                        Int8DynamicLinear, Int8StaticLinear)}


def empty_like_kind(kind: str, base: nn.Module, spec: dict[str, Any]) -> QuantModule:
    """An uninitialised quantized module shaped like `base` (a meta-device Linear / Embedding)."""
    cls = KINDS.get(kind)
    if cls is None:
        raise ConfigError(f"unknown quantized layer kind {kind!r}", "upgrade llmpress to load this artifact")
    if cls is Int8Embedding:
        return Int8Embedding(base.num_embeddings, base.embedding_dim, base.padding_idx)
    return cls(base.in_features, base.out_features, base.bias is not None, **spec)  # type: ignore[call-arg]


def fuse_linears(mods: list[nn.Module]) -> nn.Module | None:
    """One module computing `cat([m(x) for m in mods], -1)` with one kernel call (q/k/v, gate/up).

    Works for plain float `nn.Linear` and our int8 / int4 weight-only layers when all of `mods`
    share a class, input width, dtype and group size; returns None otherwise (call them one by
    one). The originals become row views of the fused tensors, so fusing costs no memory and
    the model's own forward still works.
    """
    first = mods[0]
    if len(mods) < 2 or any(type(m) is not type(first) for m in mods):
        return None
    if any((m.bias is None) != (first.bias is None) for m in mods) or any(
            m.in_features != first.in_features for m in mods):
        return None
    sizes = [m.out_features for m in mods]
    bias = torch.cat([m.bias.detach() for m in mods]) if first.bias is not None else None
    fused: nn.Module
    if type(first) is nn.Linear:
        if any(m.weight.dtype != first.weight.dtype for m in mods):
            return None
        fused = nn.Linear(first.in_features, sum(sizes), bias=bias is not None, device="meta")
        names = ["weight"]
        tensors = {"weight": torch.cat([m.weight.detach() for m in mods])}
    elif type(first) is Int8WeightOnlyLinear:
        fused = Int8WeightOnlyLinear(first.in_features, sum(sizes), bias is not None)
        names = ["qweight", "scales"]
        tensors = {n: torch.cat([getattr(m, n) for m in mods]) for n in names}
    elif type(first) is Int4WeightOnlyLinear:
        if any(m.group_size != first.group_size for m in mods):
            return None
        fused = Int4WeightOnlyLinear(first.in_features, sum(sizes), bias is not None, first.group_size)
        names = ["qweight", "scales", "mins"]
        tensors = {n: torch.cat([getattr(m, n) for m in mods]) for n in names}
    else:
        return None
    if bias is not None:
        names.append("bias")
        tensors["bias"] = bias

    def bind(m: nn.Module, name: str, t: torch.Tensor) -> None:
        if isinstance(getattr(m, name, None), nn.Parameter) or (type(m) is nn.Linear):
            setattr(m, name, nn.Parameter(t, requires_grad=False))
        else:
            setattr(m, name, t)

    for n in names:
        bind(fused, n, tensors[n])
        off = 0
        for m, size in zip(mods, sizes, strict=True):
            bind(m, n, tensors[n][off:off + size])
            off += size
    for m in (fused, *mods):
        if isinstance(m, QuantModule):  # kernel layouts are rebuilt from the new storage on next call
            m.__dict__.update({"_packed": None, "_sz": None, "_scales_bf16": None})
    return fused


def direct_linear(mod: nn.Module, engine: bool = False) -> Any:
    """For a float32 caller with 2-D contiguous activations: a function that calls our kernel directly
    (skipping the module call, reshapes and dtype casts) for decode-sized inputs, or None when `mod`
    has no such path. Same result as `mod(x)`: it is the very call `forward` makes; with `engine`, int8
    weights take the engine's activation settings instead (kernels.set_bf16a_min_rows / q8), at any row count."""
    if type(mod) is nn.Linear and mod.bias is None and mod.weight.dtype in (torch.float32, torch.bfloat16):
        kern = _kernels()
        if kern is None or not hasattr(kern, "float_linear"):
            return None
        w = mod.weight.detach()
        return lambda x: kern.float_linear(x, w)  # our kernel for decode batches, aten's linear beyond
    if not isinstance(mod, Int8WeightOnlyLinear | Int4WeightOnlyLinear) or mod.bias is not None:
        return None
    mod.prepare()
    kern = mod._kern
    if kern is None:
        return None
    rows = KERNEL_MAX_ROWS
    if isinstance(mod, Int8WeightOnlyLinear):
        q8, s8 = mod.qweight, mod.scales
        if engine:  # any row count: the kernel takes prompt-sized inputs too (tiled bf16, or a float GEMM)
            return lambda x: kern.int8_linear_decode(x, q8, s8)
        return lambda x: kern.int8_linear(x, q8, s8) if x.shape[0] <= rows else mod(x)
    q4, sz, g = mod._packed, mod._sz, mod.group_size
    assert sz is not None
    sc, mn = sz[0], sz[1]
    return lambda x: kern.int4_linear(x, q4, sc, mn, g) if x.shape[0] <= rows else mod(x)
