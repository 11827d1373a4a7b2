"""The served model without transformers: a Llama-family module tree built from an artifact's own files.

Why: the engine calls only the model's submodules (model_runner.py), yet importing transformers' modeling
code to build them costs ~190 MB of RSS in the serving process (torch.distributed / fx with sympy, dynamo,
scipy through the loss registry, accelerate, torchao), more than SmolLM2's int8 weights. This file builds
the same tree (`model.embed_tokens / layers[i].self_attn.q_proj ... / norm / rotary_emb`, `lm_head`) with
the same state-dict names from `config.json` and the safetensors, so every artifact the engine serves loads
as before: float weights memory-mapped in their stored dtype, quantized layers through the same
`fill_quantized` as the `quantized` loader, pruned layers shaped from their stored tensors, merged LoRA
(plain weights). It also has a plain causal `forward` (logits for a batch of ids) for scoring.

`load_for_engine(artifact)` returns this model, or falls back to `artifact.load_model()` (transformers) with
one log line saying why: an architecture, RoPE variant or storage it does not know, or LLMPRESS_LITE=0.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("llmpress.engine")

ENV = "LLMPRESS_LITE"
MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = ("silu", "swish")


class Unsupported(Exception):
    """Why the lite model cannot stand in for transformers' (becomes the one log line)."""


class LiteConfig(SimpleNamespace):
    """config.json as attributes (the runner reads it with getattr and defaults, as it reads transformers')."""


def rope_parameters(cfg: LiteConfig) -> dict[str, Any]:
    """RoPE settings in transformers 5's `rope_parameters` form, from either that key or the older
    `rope_theta` + `rope_scaling` pair."""
    params = getattr(cfg, "rope_parameters", None)
    if not isinstance(params, dict):
        params = dict(getattr(cfg, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def inv_freq(cfg: LiteConfig, head_dim: int) -> torch.Tensor:
    """RoPE inverse frequencies as transformers computes them (default, linear and llama3 types)."""
    p = rope_parameters(cfg)
    kind = p["rope_type"]
    if kind not in ROPE_TYPES:
        raise Unsupported(f"RoPE type {kind!r} (the lite model knows {', '.join(ROPE_TYPES)})")
    if float(p.get("partial_rotary_factor", 1.0)) != 1.0:
        raise Unsupported("partial rotary embeddings")
    base = float(p["rope_theta"])
    freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if kind == "linear":
        return freq / float(p["factor"])
    if kind == "llama3":
        factor, lo, hi = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
        old = float(p["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > old / lo, freq / factor, freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
        return torch.where(medium, smoothed, scaled)
    return freq


def _meta(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)


def _linear(i: int, o: int, bias: bool) -> nn.Linear:
    """A Linear on the meta device (no memory; the stored tensor is assigned when loading), built without
    running its initialiser: random init of a meta tensor goes through torch._refs, which imports dynamo
    and sympy (~40 MB of RSS) into the serving process."""
    m = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(m)
    m.in_features, m.out_features = i, o
    m.weight = _meta(o, i)
    m.register_parameter("bias", _meta(o) if bias else None)
    return m


# -- modules (names and call signatures as the runner and the fused decoder expect) ---------------------------
class LiteRMSNorm(nn.Module):
    """transformers' Llama RMSNorm: float32 statistics, weight applied in the input's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = _meta(dim)
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dt)


class Rotary(nn.Module):
    """cos / sin for positions, shaped [batch, T, head_dim] in the input's dtype (transformers' contract)."""

    def __init__(self, freq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_freq", freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((f, f), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden: int, n_heads: int, n_kv: int, head_dim: int, bias: bool, o_bias: bool) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.scaling = head_dim ** -0.5
        self.q_proj = _linear(hidden, n_heads * head_dim, bias)
        self.k_proj = _linear(hidden, n_kv * head_dim, bias)
        self.v_proj = _linear(hidden, n_kv * head_dim, bias)
        self.o_proj = _linear(n_heads * head_dim, hidden, o_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(B, T, -1, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, hd).transpose(1, 2)
        c, s = cos[:, None], sin[:, None]
        q, k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scaling,
                                           enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = _linear(hidden, inter, bias)
        self.up_proj = _linear(hidden, inter, bias)
        self.down_proj = _linear(inter, hidden, bias)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LiteConfig, head_dim: int) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, float(getattr(cfg, "rms_norm_eps", 1e-6))
        qkv_bias = bool(getattr(cfg, "attention_bias", False)) or cfg.model_type == "qwen2"
        self.self_attn = Attention(h, cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None)
                                   or cfg.num_attention_heads, head_dim, qkv_bias,
                                   bool(getattr(cfg, "attention_bias", False)))
        self.mlp = MLP(h, cfg.intermediate_size, bool(getattr(cfg, "mlp_bias", False)))
        self.input_layernorm = LiteRMSNorm(h, eps)
        self.post_attention_layernorm = LiteRMSNorm(h, eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    def __init__(self, cfg: LiteConfig, head_dim: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=_meta(cfg.vocab_size, cfg.hidden_size),
                                         _freeze=True)
        self.layers = nn.ModuleList(DecoderLayer(cfg, head_dim) for _ in range(cfg.num_hidden_layers))
        self.norm = LiteRMSNorm(cfg.hidden_size, float(getattr(cfg, "rms_norm_eps", 1e-6)))
        self.rotary_emb = Rotary(torch.empty(head_dim // 2, device="meta"))


@dataclass
class LiteOutput:
    logits: torch.Tensor


class LiteCausalLM(nn.Module):
    """Llama / Mistral / Qwen2 decoder with transformers' module and state-dict names."""

    def __init__(self, cfg: LiteConfig) -> None:
        super().__init__()
        self.config = cfg
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.model = Backbone(cfg, self.head_dim)
        self.lm_head = _linear(cfg.hidden_size, cfg.vocab_size, False)
        self.generation_config: SimpleNamespace | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: Any) -> LiteOutput:
        """Logits for every position of `input_ids` [B, T] (a full causal forward, no cache). A 0/1
        `attention_mask` [B, T] hides padded keys; positions are 0..T-1 as in transformers' plain forward."""
        B, T = input_ids.shape
        m = self.model
        h = m.embed_tokens(input_ids)
        cos, sin = m.rotary_emb(h, torch.arange(T)[None].expand(B, T))
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            mask = (causal[None] & attention_mask.bool()[:, None, :])[:, None]
            mask = mask | torch.eye(T, dtype=torch.bool)[None, None]  # a padded query still sees itself
        for layer in m.layers:
            h = layer(h, cos, sin, mask)
        return LiteOutput(self.lm_head(m.norm(h)))


# -- loading ----------------------------------------------------------------------------------------------
def disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise Unsupported(f"{path.name} cannot be read ({e})") from e
    if not isinstance(data, dict):
        raise Unsupported(f"{path.name} is not a JSON object")
    return data


def check_config(cfg: LiteConfig) -> None:
    archs = getattr(cfg, "architectures", None) or []
    if getattr(cfg, "model_type", None) not in MODEL_TYPES:
        raise Unsupported(f"model type {getattr(cfg, 'model_type', None)!r}")
    if archs and not str(archs[0]).endswith("ForCausalLM"):
        raise Unsupported(f"architecture {archs[0]!r}")
    if getattr(cfg, "quantization_config", None):
        raise Unsupported("a transformers quantization_config")
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and cfg.model_type != "llama":
        raise Unsupported("sliding-window attention")
    if str(getattr(cfg, "hidden_act", "silu")) not in ACTIVATIONS:
        raise Unsupported(f"activation {getattr(cfg, 'hidden_act', None)!r}")
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if not isinstance(getattr(cfg, key, None), int):
            raise Unsupported(f"config.json has no integer {key}")


def _float_weights(path: Path) -> dict[str, torch.Tensor]:
    """The float state dict, memory-mapped (pages become resident as the engine reads them)."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise Unsupported("no safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sd[key] = f.get_tensor(key)
    return sd


def _reshape_linears(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Linear layers whose stored weight has another shape than config.json says (per-layer pruning) become
    meta Linears of the stored shape, so assignment fits and the runner reads head counts per layer."""
    for name, mod in list(model.named_modules()):
        w = sd.get(f"{name}.weight")
        if type(mod) is nn.Linear and w is not None and w.dim() == 2 and tuple(w.shape) != tuple(mod.weight.shape):
            model.set_submodule(name, _linear(w.shape[1], w.shape[0], f"{name}.bias" in sd))


def build(artifact: Any) -> LiteCausalLM:
    """The artifact as a LiteCausalLM, or `Unsupported` saying why not."""
    from llmpress.compress.quantize.storage import fill_quantized
    from llmpress.errors import ManifestError, SourceError

    m = artifact.manifest
    if m.format != "hf" or m.loader not in ("hf", "quantized"):
        raise Unsupported(f"{m.format} artifact with the {m.loader!r} loader")
    path = Path(artifact.path)
    cfg = LiteConfig(**read_json(path / "config.json"))
    check_config(cfg)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    freq = inv_freq(cfg, head_dim)
    model = LiteCausalLM(cfg)  # on the meta device: no memory until the stored tensors are assigned
    model.model.rotary_emb = Rotary(freq)
    if m.loader == "quantized":
        try:
            fill_quantized(model, artifact)
        except ManifestError as e:  # transformers' build of the same artifact says whether it is really broken
            raise Unsupported(e.message) from e
        tied = False
    else:
        sd = _float_weights(path)
        _reshape_linears(model, sd)
        tied = "lm_head.weight" not in sd and bool(getattr(cfg, "tie_word_embeddings", False))
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        missing = [k for k in missing if not (tied and k == "lm_head.weight")]
        unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]  # older saves kept it
        if missing:  # transformers would fill these with random numbers and serve them: refuse instead
            raise SourceError(f"artifact {path}: config.json describes tensors the weights lack "
                              f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})",
                              "restore the artifact's config.json / weights or re-create it")
        if unexpected:
            raise Unsupported(f"stored tensors the {cfg.model_type} decoder does not have ({unexpected[:2]})")
        del sd
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise Unsupported(f"tensors {left[:2]} were not stored")
    gen = path / "generation_config.json"
    if gen.is_file():
        model.generation_config = SimpleNamespace(**read_json(gen))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_for_engine(artifact: Any) -> Any:
    """What the engine serves for `artifact`: the lite model when it applies, else `artifact.load_model()`
    (transformers), with one log line saying why."""
    if disabled():
        log.info("lite model off (%s=0): loading through transformers", ENV)
        return artifact.load_model()
    try:
        return build(artifact)
    except Unsupported as e:
        log.info("lite model does not apply (%s): loading through transformers", e)
        return artifact.load_model()
