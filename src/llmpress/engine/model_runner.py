"""One forward step over a flat batch of tokens with a block-based KV cache (nano-vllm's ModelRunner).

We write the Llama-family forward ourselves but call the model's own submodules (embeddings, q/k/v/o
projections, MLP, norms, rotary, lm_head): transformers' forward knows only its own contiguous
caches, whereas we need paged KV shared between requests. Calling the submodules keeps every
llmpress artifact working: quantized Linear replacements, pruned layers (head counts and MLP sizes
are read per layer, from the modules) and merged LoRA.
"""

from __future__ import annotations

import mmap
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from llmpress.compress.quantize.layers import direct_linear, fuse_linears
from llmpress.compress.quantize.storage import trim_heap
from llmpress.engine import fastpath
from llmpress.engine.memory import release_file_pages, resident_bytes
from llmpress.engine.sequence import Sequence
from llmpress.errors import ConfigError, SourceError

SUPPORTED = ("llama", "mistral", "qwen2")


def _rms(norm: Any) -> Any:
    """`norm` as a single F.rms_norm call when it is a standard RMSNorm (float32 math, as HF's), else itself."""
    w, eps = getattr(norm, "weight", None), getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if not type(norm).__name__.endswith("RMSNorm") or not isinstance(w, torch.Tensor) or eps is None:
        return norm
    if w.dtype != torch.float32:
        return norm
    shape = (w.shape[-1],)
    return lambda x: F.rms_norm(x, shape, w, eps)


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros in anonymous mmap pages: the OS hands out zero pages on first write, so the KV budget
    becomes resident as requests fill it instead of at start (torch.zeros writes every page)."""
    n = 1
    for d in shape:
        n *= d
    nbytes = n * torch.tensor([], dtype=dtype).element_size()
    if nbytes < 1 << 20:
        return torch.zeros(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.frombuffer(buf, dtype=dtype).view(shape)  # the tensor keeps `buf` alive


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class ModelRunner:
    """Holds the model and the preallocated KV tensors; `run` does one step and returns logits rows."""

    def __init__(self, model: Any, block_size: int = 16, kv_cache_bytes: int = 256 << 20,
                 num_blocks: int | None = None, fast_path: bool = True) -> None:
        """`fast_path=False` (or LLMPRESS_FASTPATH=0) keeps every step on the reference path."""
        cfg = model.config
        mtype = getattr(cfg, "model_type", "?")
        inner = getattr(model, "model", None)
        if mtype not in SUPPORTED or inner is None or not hasattr(inner, "layers"):
            raise SourceError(f"the serving engine does not support model type {mtype!r}",
                              f"serve a model of type {', '.join(SUPPORTED)} (Llama family)")
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and mtype != "llama":
            raise SourceError(f"{mtype} with a sliding attention window is not supported by the engine",
                              "serve a model without sliding-window attention")
        for layer in inner.layers:
            if hasattr(layer.self_attn, "q_norm"):
                raise SourceError(f"{mtype} with per-head q/k norms is not supported by the engine",
                                  "serve a Llama-family model")
        self.model = model.eval()
        self.inner = inner
        self.block_size = block_size
        with torch.inference_mode():  # from the modules' outputs: quantized embeddings have no float .weight
            e = inner.embed_tokens(torch.zeros(1, dtype=torch.long))
        self.dtype = e.dtype if e.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
        self.vocab_size = int(getattr(cfg, "vocab_size", 0) or 0)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.max_model_len = int(getattr(cfg, "max_position_embeddings", 2048))
        self.layers = list(inner.layers)
        # Head counts per layer from the modules themselves (structured pruning changes them).
        hidden = e.shape[-1]
        self.n_heads: list[int] = []
        self.n_kv: list[int] = []
        self.scaling: list[float] = []
        with torch.inference_mode():
            probe = torch.zeros(1, hidden, dtype=self.dtype)
            for layer in self.layers:
                a = layer.self_attn
                self.n_heads.append(a.q_proj(probe).shape[-1] // self.head_dim)
                self.n_kv.append(a.k_proj(probe).shape[-1] // self.head_dim)
                self.scaling.append(float(getattr(a, "scaling", self.head_dim ** -0.5)))
        elem = torch.tensor([], dtype=self.dtype).element_size()
        self.bytes_per_block = sum(2 * block_size * n * self.head_dim * elem for n in self.n_kv)
        if num_blocks is None:
            num_blocks = kv_cache_bytes // self.bytes_per_block
        if num_blocks < 2:
            raise ConfigError(f"a KV-cache budget of {kv_cache_bytes / 2**20:.1f} MiB holds {num_blocks} blocks "
                              f"({self.bytes_per_block / 2**20:.2f} MiB each)",
                              "raise --kv-cache-mb or lower --block-size", param="kv_cache_mb")
        self.num_blocks = int(num_blocks)
        # Preallocated once: [slots, kv_heads, head_dim] per layer, slot = block * block_size + offset.
        n_slots = self.num_blocks * block_size
        self.k_cache = [_lazy_zeros((n_slots, n, self.head_dim), self.dtype) for n in self.n_kv]
        self.v_cache = [_lazy_zeros((n_slots, n, self.head_dim), self.dtype) for n in self.n_kv]
        # Section timers for benchmarks/decode_profile.py: None (off) costs one `P and ...` test per
        # section; a dict accumulates seconds per section (see `lap`).
        self.prof: dict[str, float] | None = None
        self._build_fast_path()
        # Decode-only steps run every layer in one C++ call when the model allows (engine/fastpath.py).
        self.fast_path = fastpath.build(self) if fast_path else None
        trim_heap()

    # -- fast path --------------------------------------------------------------------
    def _build_fast_path(self) -> None:
        """Per layer: q/k/v and gate/up fused into one weight call each (when their types allow) and
        RMSNorms as one `F.rms_norm` call. Decode at batch 1 is bound by per-op overhead as much as by
        weight bytes on a CPU; this removes ~20 of ~50 ops per layer and changes no result."""
        self.qkv: list[Any] = []
        self.gate_up: list[Any] = []
        self.qkv_mod: list[Any] = []  # the fused modules themselves (for the C++ decoder)
        self.gate_up_mod: list[Any] = []
        self.o_proj: list[Any] = []
        self.down: list[Any] = []
        # float32 runs call our kernels directly, with the engine's activation settings (kernels.py: bf16
        # activations for int8 weights from 8 rows where the CPU has AVX512-BF16, within the quality gate)
        fast = (lambda m: direct_linear(m, engine=True) or m) if self.dtype == torch.float32 else (lambda m: m)
        self.released_mb = 0.0
        for layer in self.layers:
            a, mlp = layer.self_attn, layer.mlp
            # Float weights fused below are copied; their old storages may be pages of a mapped weight file
            # that would stay resident beside the copies (see memory.release_file_pages): dropped per layer.
            replaced = [m.weight.untyped_storage() for m in (a.q_proj, a.k_proj, a.v_proj, getattr(mlp, "gate_proj", None),
                                                             getattr(mlp, "up_proj", None))
                        if type(m) is torch.nn.Linear]
            f = fuse_linears([a.q_proj, a.k_proj, a.v_proj])
            self.qkv.append(fast(f) if f is not None else None)
            self.qkv_mod.append(f)
            ok = all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            f = fuse_linears([mlp.gate_proj, mlp.up_proj]) if ok else None
            self.gate_up.append(fast(f) if f is not None else None)
            self.gate_up_mod.append(f)
            self.o_proj.append(fast(a.o_proj))
            self.down.append(fast(mlp.down_proj) if ok else None)
            self.released_mb += release_file_pages(replaced) / 2**20
            del replaced
        self.norms = [(_rms(layer.input_layernorm), _rms(layer.post_attention_layernorm)) for layer in self.layers]
        self.final_norm = _rms(self.inner.norm)
        self.lm_head = fast(self.model.lm_head)

    def _attn_in(self, li: int, x: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (rotary applied) and v as [T, heads, head_dim]."""
        a, hd = self.layers[li].self_attn, self.head_dim
        f = self.qkv[li]
        if f is None:
            q, k = a.q_proj(x).view(len(x), -1, hd), a.k_proj(x).view(len(x), -1, hd)
            v = a.v_proj(x).view(len(x), -1, hd)
            return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v
        y = f(x).view(len(x), -1, hd)
        self.prof is not None and self.lap("matmul")
        nq, nk = self.n_heads[li], self.n_kv[li]
        qk = y[:, :nq + nk]  # q and k heads rotate together: one set of ops instead of two
        qk = qk * cos + _rotate_half(qk) * sin
        self.prof is not None and self.lap("elementwise")
        return qk[:, :nq], qk[:, nq:], y[:, nq + nk:]

    def _mlp(self, li: int, x: torch.Tensor) -> torch.Tensor:
        mlp = self.layers[li].mlp
        f = self.gate_up[li]
        if f is None:
            return mlp(x)
        P = self.prof
        g, u = f(x).chunk(2, dim=-1)
        P is not None and self.lap("matmul")
        a = mlp.act_fn(g) * u
        P is not None and self.lap("elementwise")
        y = self.down[li](a)
        P is not None and self.lap("matmul")
        return y

    def lap(self, section: str) -> bool:
        """Profiling only: charge the time since the previous lap to `section`."""
        P = self.prof
        assert P is not None
        now = time.perf_counter()
        P[section] = P.get(section, 0.0) + now - P["_t"]
        P["_t"] = now
        return True

    # -- input preparation ------------------------------------------------------------
    def _slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        bt = torch.tensor(seq.block_table, dtype=torch.long)
        pos = torch.arange(start, end)
        return bt[pos // self.block_size] * self.block_size + pos % self.block_size

    @torch.inference_mode()
    def run(self, items: list[tuple[Sequence, int]], num_decode: int,
            all_logits: set[int] | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Feed `n` new tokens of each sequence; return logits rows and, per item, its (start, count) rows.

        Rows are the item's last token (when it completes the pending tokens) or, for items whose index is
        in `all_logits`, every fed token (prompt logprobs). Items that return no row get count 0.
        """
        P, lap = self.prof, self.lap
        if P is not None:
            P["_t"] = time.perf_counter()
        if self.fast_path is not None and num_decode == len(items):
            out = self._run_fast(items)
            if out is not None:
                return out
        bs = self.block_size
        tokens: list[int] = []
        positions: list[int] = []
        for seq, n in items:
            tokens += seq.token_ids[seq.num_computed:seq.num_computed + n]
            positions += range(seq.num_computed, seq.num_computed + n)
        T = len(tokens)
        ids = torch.tensor(tokens, dtype=torch.long)
        pos = torch.tensor(positions, dtype=torch.long)
        # Decodes: one token each, attention over a gathered [B, S] window of slots.
        B = num_decode
        if B:
            ctx = torch.tensor([s.num_computed + 1 for s, _ in items[:B]])
            S = int(ctx.max())
            nb = (S + bs - 1) // bs
            bt = torch.tensor([s.block_table[:nb] + [0] * (nb - len(s.block_table[:nb])) for s, _ in items[:B]])
            p = torch.arange(S)
            dec_idx = bt[:, p // bs] * bs + p % bs  # [B, S]
            dec_mask = (p[None, :] < ctx[:, None])[:, None, None, :]  # [B, 1, 1, S]
            dec_slots = dec_idx[torch.arange(B), ctx - 1]
            dec_flat = dec_idx.reshape(-1)
        prefill: list[tuple[int, int, int, torch.Tensor]] = []  # (offset, n, computed, ctx slots)
        off = B
        for seq, n in items[B:]:
            prefill.append((off, n, seq.num_computed, self._slots(seq, 0, seq.num_computed + n)))
            off += n
        slot_parts = ([dec_slots] if B else []) + [c[-n:] for _, n, _, c in prefill]
        slots = torch.cat(slot_parts)
        # Logit rows.
        rows: list[int] = []
        spans: list[tuple[int, int]] = []
        off = 0
        for i, (seq, n) in enumerate(items):
            completes = seq.num_computed + n == len(seq)
            if all_logits and i in all_logits:
                spans.append((len(rows), n))
                rows += range(off, off + n)
            elif completes:
                spans.append((len(rows), 1))
                rows.append(off + n - 1)
            else:
                spans.append((len(rows), 0))
            off += n

        P and lap("prep")
        h = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(h, pos[None])
        cos, sin = cos[0, :, None, :].to(self.dtype), sin[0, :, None, :].to(self.dtype)
        P and lap("elementwise")
        hd = self.head_dim
        for li in range(len(self.layers)):
            norm_in, norm_post = self.norms[li]
            x = norm_in(h)
            P and lap("elementwise")
            q, k, v = self._attn_in(li, x, cos, sin)
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.index_copy_(0, slots, k)
            vc.index_copy_(0, slots, v)
            P and lap("kv_write")
            outs: list[torch.Tensor] = []
            if B:
                # index_select, not kc[dec_idx]: advanced indexing is ~100x slower on CPU here
                kk = kc.index_select(0, dec_flat).view(B, S, -1, hd).transpose(1, 2)  # [B, kv, S, hd]
                vv = vc.index_select(0, dec_flat).view(B, S, -1, hd).transpose(1, 2)
                o = F.scaled_dot_product_attention(q[:B, :, None, :], kk, vv, attn_mask=dec_mask,
                                                   scale=self.scaling[li], enable_gqa=True)
                outs.append(o.reshape(B, -1))
            for o0, n, done, cslots in prefill:
                qq = q[o0:o0 + n].transpose(0, 1)[None]  # [1, h, n, hd]
                kk = kc.index_select(0, cslots).transpose(0, 1)[None]
                vv = vc.index_select(0, cslots).transpose(0, 1)[None]
                if done == 0:
                    o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=self.scaling[li],
                                                       enable_gqa=True)
                else:
                    c = done + n
                    mask = torch.arange(c)[None, :] <= (done + torch.arange(n))[:, None]
                    o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=self.scaling[li],
                                                       enable_gqa=True)
                outs.append(o[0].transpose(0, 1).reshape(n, -1))
            attn = outs[0] if len(outs) == 1 else torch.cat(outs)
            P and lap("attention")
            a = self.o_proj[li](attn)
            P and lap("matmul")
            h = h + a
            x = norm_post(h)
            P and lap("elementwise")
            h = h + self._mlp(li, x)
        if not rows:
            return torch.empty(0, 0), spans
        hs = self.final_norm(h.index_select(0, torch.tensor(rows)) if len(rows) != T else h)
        P and lap("elementwise")
        logits = self.lm_head(hs).float()
        P and lap("matmul")
        return logits, spans

    def _run_fast(self, items: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
        """A decode-only step through the C++ decoder; None when a row is not a plain one-token decode."""
        P, lap = self.prof, self.lap
        pos: list[int] = []
        toks: list[int] = []
        bts: list[list[int]] = []
        for seq, n in items:
            c = seq.num_computed
            if n != 1 or c + 1 != len(seq):
                return None
            pos.append(c)
            toks.append(seq.token_ids[c])
            bts.append(seq.block_table)
        P and lap("prep")
        h = self.inner.embed_tokens(torch.tensor(toks, dtype=torch.long))
        cos, sin = self.inner.rotary_emb(h, torch.tensor(pos, dtype=torch.long)[None])
        P and lap("elementwise")
        assert self.fast_path is not None
        dec = self.fast_path.dec
        if P is not None:
            dec.set_profile(True)
        h = self.fast_path.forward(h.float(), cos[0], sin[0], pos, bts, self.block_size)
        if P is not None:
            t = dec.times()
            dec.set_profile(False)
            for name, v in zip(("matmul", "attention", "kv_write", "elementwise"), t, strict=True):
                P[name] = P.get(name, 0.0) + v
            P["_t"] += sum(t)
            lap("fused")  # the C++ call's time outside its timed sections
        logits = self.lm_head(self.final_norm(h.to(self.dtype))).float()
        P and lap("matmul")
        return logits, [(i, 1) for i in range(len(items))]

    @property
    def kv_cache_mb(self) -> float:
        return self.num_blocks * self.bytes_per_block / 2**20

    def kv_resident_mb(self) -> float | None:
        """MiB of the KV cache actually in RAM now (its pages become resident as requests write them);
        None where the OS cannot say (see engine/memory.py)."""
        n = resident_bytes([*self.k_cache, *self.v_cache])
        return None if n is None else n / 2**20


def check_context(n_prompt: int, max_tokens: int, max_model_len: int) -> None:
    """Refuse a request that cannot fit the model's context."""
    if n_prompt + max_tokens > max_model_len:
        raise ConfigError(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                          f"of {max_model_len} tokens", "shorten the prompt or lower max_tokens", param="max_tokens")


