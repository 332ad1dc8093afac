"""GPTQ (Frantar et al. 2022) as the records use it (PR #1938): per-row int-b weights
chosen column by column, each column's rounding error pushed onto the columns not yet
quantized through the inverse Hessian of the layer's inputs, H = X^T X. Hessians come
from training batches only (legality C6). Scales are evalkit.model.quant's per-row scales, so
the entries are ordinary {"kind": "q"} entries the engine already reads.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from evalkit.model.gpt import GPT
from evalkit.model.layers import Linear

BLOCK = 128  # columns per lazy-update block (the paper's choice)


def gptq_quantize(w: Tensor, h: Tensor, scale: Tensor, bits: int, damp: float = 0.01,
                  device: torch.device | None = None) -> Tensor:
    """(R, K) weight, (K, K) Hessian, (R,) scales -> (R, K) int8 codes in +-(2^(b-1)-1).

    Device-agnostic: every tensor is moved to (or created on) one compute `device`, by
    default the weight's; the codes come back on the weight's device. (Hessians collected
    on the GPU may meet weights already moved to the host for export.) No boolean-mask
    indexing either, so the whole path also runs on the meta device."""
    home, device = w.device, torch.device(device) if device is not None else w.device
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().to(device, torch.float32, copy=True)
    h = h.detach().to(device, torch.float64, copy=True)
    dead = torch.diag(h) == 0  # inputs never seen: any value works, keep them exact
    h = h + torch.diag(dead.to(h.dtype))  # H[i, i] = 1 on dead inputs
    w = w * (~dead).to(w.dtype)[None]  # and their weights 0
    h += damp * torch.diag(h).mean() * torch.eye(h.size(0), dtype=h.dtype, device=device)
    # Upper Cholesky factor of H^-1: row i holds the update weights for columns > i.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    s = scale.detach().to(device, torch.float32)[:, None]  # (R, 1)
    q = torch.zeros_like(w)
    for b0 in range(0, w.size(1), BLOCK):
        b1 = min(b0 + BLOCK, w.size(1))
        wb, err = w[:, b0:b1].clone(), torch.zeros(w.size(0), b1 - b0, device=device)
        for i in range(b1 - b0):
            col = wb[:, i]
            qc = torch.clamp(torch.round(col[:, None] / s), -qmax, qmax)[:, 0]
            q[:, b0 + i] = qc
            e = (col - qc * s[:, 0]) / hinv[b0 + i, b0 + i]
            wb[:, i:] -= e[:, None] * hinv[b0 + i, b0 + i:b1][None]
            err[:, i] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return q.to(home, torch.int8)


def gptq_entries(state: dict[str, Tensor], entries: dict[str, dict], hessians: dict[str, Tensor]) -> dict[str, dict]:
    """Replace the round-to-nearest codes of every quantized matrix that has a Hessian."""
    out = {}
    for name, h in hessians.items():
        e = entries.get(name)
        if e is None or e["kind"] != "q" or state[name].ndim != 2:
            continue
        # Run where the Hessian is (the GPU after GPU training); codes follow the weight.
        q = gptq_quantize(state[name], h, e["scale"], e["bits"], device=h.device)
        out[name] = {**e, "q": q}
    return out


@torch.no_grad()
def collect_hessians(model: GPT, state: dict[str, Tensor], batches, n_batches: int) -> dict[str, Tensor]:
    """X^T X of every Linear's input over `n_batches` training batches, with the exported
    (averaged) weights loaded; the model's own weights are restored afterwards."""
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    hess: dict[str, Tensor] = {}
    hooks = []

    def hook(name: str):
        def fn(_m: nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> None:
            x = inp[0].detach().float().reshape(-1, inp[0].size(-1))
            hess[name] = hess.get(name, 0) + x.T @ x
        return fn

    for name, m in model.named_modules():
        if isinstance(m, Linear):
            hooks.append(m.register_forward_hook(hook(f"{name}.weight")))
    try:
        model.eval()
        for _ in range(n_batches):
            x, _y = batches.next()
            model(x)
    finally:
        for hk in hooks:
            hk.remove()
        model.load_state_dict(live)
        model.train()
    return hess
