"""Temporal saliency rescaling (TSR; Ismail et al. 2020), as a wrapper of any saliency method:
`tsr-<method>` in the SALIENCY registry's lookups (`get_saliency`).

For a series x (T, F) and the method's attribution a0 = A(x):
1. each step t scores Δ_t = Σ |a0 − A(x with step t masked)|; τ = min-max scaled Δ over t;
2. the steps with τ above its 0.55 quantile are kept;
3. within a kept step, each feature scores δ_{t,f} = Σ |a0 − A(x with cell (t, f) masked)|,
   min-max scaled over f: φ_{t,f}; the other steps get φ = 0.1;
4. the map is R_{t,f} = τ_t · φ_{t,f}.
Masked cells take the sample's first cell's value, as the benchmark's code does
(`getTwoStepRescaling`, which also uses the raw signed attribution for Δ).

It costs T + (kept steps) x F attribution calls per series: about 50 + 22 x 50 = 1150 on the
TSB sets, against 1 for the method itself. Every series of a batch is done at once: the masked
copies of all samples go through the method in chunks of CHUNK inputs.
"""

from __future__ import annotations

import torch

from ..errors import UsageError

QUANTILE = 0.55
OTHER = 0.1
CHUNK = 512


def _minmax(v: torch.Tensor) -> torch.Tensor:
    """Min-max scaled along the last dim into [0, 1]; a constant row becomes 0."""
    lo, hi = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    return torch.where(hi > lo, (v - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(v))


def _attribute(method, model, xs, targets, kw):
    """The method on many inputs, CHUNK at a time: (M, T, F)."""
    return torch.cat([method(model, xs[i : i + CHUNK], targets[i : i + CHUNK], **kw).detach()
                      for i in range(0, len(xs), CHUNK)]) if len(xs) else xs.new_zeros(xs.shape)


def tsr(method):
    """A saliency function: fn(model, x (B, T, F), target (B,), **kw) -> (B, T, F)."""

    def attribute(model, x, target, **kw):
        if x.dim() != 3:
            raise UsageError("tsr-<method> is for series (B, T, F); use the method itself on other data")
        b, t, f = x.shape
        a0 = method(model, x, target, **kw).detach()  # (B, T, F), raw and signed
        v = x[:, 0, 0]  # (B,) the value a masked cell takes
        steps = torch.arange(t, device=x.device)
        # 1. one copy per (sample, step) with that step masked: (B, T, T, F)
        xt = x[:, None].repeat(1, t, 1, 1)
        xt[:, steps, steps, :] = v[:, None, None]
        at = _attribute(method, model, xt.reshape(b * t, t, f), target.repeat_interleave(t), kw).view(b, t, t, f)
        tau = _minmax((at - a0[:, None]).abs().sum((2, 3)))  # (B, T)
        # 2. the kept steps
        keep = tau > torch.quantile(tau, QUANTILE, dim=1, keepdim=True)  # (B, T)
        bi, ti = keep.nonzero(as_tuple=True)  # (S,) pairs
        # 3. one copy per (kept pair, feature) with that cell masked: (S, F, T, F)
        feats = torch.arange(f, device=x.device)
        xf = x[bi][:, None].repeat(1, f, 1, 1)
        s = len(bi)
        xf[torch.arange(s, device=x.device)[:, None], feats[None], ti[:, None], feats[None]] = v[bi][:, None]
        af = _attribute(method, model, xf.reshape(s * f, t, f), target[bi].repeat_interleave(f), kw).view(s, f, t, f)
        phi = torch.full((b, t, f), OTHER, dtype=a0.dtype, device=x.device)
        phi[bi, ti] = _minmax((af - a0[bi][:, None]).abs().sum((2, 3))).to(a0.dtype)  # (S, F)
        # 4.
        return tau[:, :, None].to(a0.dtype) * phi

    attribute.__name__ = f"tsr_{getattr(method, '__name__', 'method')}"
    return attribute
