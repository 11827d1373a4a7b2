"""GPTQ error compensation for groupwise int4 (Frantar et al. 2022), written for our storage.

Written here because the maintained GPTQ packages (auto-gptq, gptqmodel) need CUDA builds
and their own packed formats; torchao 0.18 ships GPTQ only as a prototype tied to its
tensor subclasses. This is the reference algorithm: columns are quantized one at a time and
each column's rounding error is spread over the not-yet-quantized columns through the
inverse Hessian H = X^T X of the layer's calibration inputs.

`act_order` quantizes columns in order of decreasing H diagonal (the most active inputs
first) with "static groups": each group's (scale, min) is fixed from the original weights up
front, so groups stay contiguous in the stored layout. Without it, groups are scaled from
the error-updated weights as they are reached.
"""

from __future__ import annotations

import torch

from llmpress.compress.quantize.layers import int4_group_params


def gptq_int4(w: torch.Tensor, h: torch.Tensor, group: int, damp: float = 0.01, block: int = 128,
              act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize w [out, in] with Hessian h [in, in]; returns (codes uint8 [out, in], scales, mins [out, in/g])."""
    w = w.detach().float().clone()
    n, k = w.shape
    h = h.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = torch.zeros(n, k // group)
    mins = torch.zeros(n, k // group)
    perm = torch.arange(k)
    if act_order:
        scales, mins = int4_group_params(w, group)
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    gidx = perm // group  # group of each (permuted) column
    h += torch.eye(k, dtype=h.dtype) * (damp * torch.mean(torch.diag(h)))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    block = max(block, group)
    codes = torch.zeros(n, k, dtype=torch.uint8)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not act_order and col % group == 0:
                s_, m_ = int4_group_params(w1[:, i : i + group], group)
                scales[:, col // group], mins[:, col // group] = s_[:, 0], m_[:, 0]
            s, m = scales[:, gidx[col]], mins[:, gidx[col]]
            wc = w1[:, i]
            q = torch.round((wc - m) / s).clamp(0, 15)
            codes[:, col] = q.to(torch.uint8)
            e = (wc - (q * s + m)) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if act_order:
        out = torch.empty_like(codes)
        out[:, perm] = codes
        codes = out
    return codes, scales, mins
