"""Optimizers and schedules: Muon for the matrices, AdamW for everything else.

Muon (Keller Jordan, modded-nanogpt; used by every parameter-golf record) replaces each
matrix's momentum update by its nearest semi-orthogonal matrix, computed with a few
Newton-Schulz iterations. Records add a momentum warm-up (e.g. 0.85 -> 0.95 over the
first 500 steps) and decoupled weight decay; both live here. Schedules are a function of
"progress" in [0, 1], measured either in steps or in fractions of the wall-clock cap.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from evalkit.model.quant import CONTROL_PATTERNS

# Quintic Newton-Schulz coefficients from modded-nanogpt: they push singular values into
# ~[0.7, 1.2] in 5 steps, which is all Muon needs (an exact polar factor is not required).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximate U V^T of g = U S V^T for a 2-D g (bf16 on CUDA, float32 on CPU)."""
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transposed = x.size(0) > x.size(1)
    if transposed:  # iterate on the short side: X X^T is the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1: inside NS's basin
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """SGD-Nesterov momentum whose update is orthogonalized, scaled so that its RMS does
    not depend on the matrix's aspect ratio; decoupled weight decay as in AdamW.

    Under DDP (a process group of more than one rank) the Newton-Schulz work is sharded:
    every rank holds the same averaged gradients, so matrix i's update is computed (and
    its momentum kept) only by rank i % world_size, then all-gathered, instead of every
    rank orthogonalizing every matrix (8x redundant on 8 GPUs). Same updates bit for bit:
    each is computed by the same code from the same inputs, just on one rank."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5,
                 weight_decay: float = 0.0, nesterov: bool = True, shard: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps,
                                      weight_decay=weight_decay, nesterov=nesterov))
        self.shard = shard

    def _update(self, p: Tensor, group: dict) -> Tensor:
        """The orthogonalized momentum update of one matrix (advances its momentum)."""
        buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
        buf.mul_(group["momentum"]).add_(p.grad)
        g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        update = newton_schulz(g.reshape(g.size(0), -1), group["ns_steps"]).view_as(p)
        return update * max(1.0, p.size(0) / p[0].numel()) ** 0.5  # tall matrices: same RMS

    @staticmethod
    def _apply(p: Tensor, update: Tensor, group: dict) -> None:
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"])

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch API
        world = dist.get_world_size() if self.shard and dist.is_available() and dist.is_initialized() else 1
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if world == 1:
                for p in params:
                    self._apply(p, self._update(p, group), group)
            else:
                self._sharded_step(params, group, world, dist.get_rank())

    def _sharded_step(self, params: list[Tensor], group: dict, world: int, rank: int) -> None:
        """Matrices of one shape in rounds of `world`: rank r computes the r-th of each round,
        one all_gather hands every rank all of them. (Every rank has the same gradients, so
        all agree on which parameters have one.)"""
        by_shape: dict[tuple, list[Tensor]] = {}
        for p in params:
            by_shape.setdefault((tuple(p.shape), p.dtype), []).append(p)
        for same in by_shape.values():
            for base in range(0, len(same), world):
                chunk = same[base:base + world]
                mine = self._update(chunk[rank], group) if rank < len(chunk) else torch.zeros_like(chunk[0])
                gathered = [torch.empty_like(mine) for _ in range(world)]
                dist.all_gather(gathered, mine.contiguous())
                for p, update in zip(chunk, gathered):
                    self._apply(p, update, group)


# Lookup tables (token / bigram embeddings) and the output head train with AdamW.
EMBED_KEYS = ("tok_emb", "lm_head", "bigram.embed")


def is_muon_param(name: str, p: nn.Parameter) -> bool:
    """Hidden matrices go to Muon; embeddings, the head and control tensors to AdamW
    (Muon's orthogonalization is meaningless for a lookup table or a gain vector)."""
    return p.ndim == 2 and not any(k in name for k in EMBED_KEYS + CONTROL_PATTERNS)


def build_optimizers(model: nn.Module, t: dict) -> list[torch.optim.Optimizer]:
    """[Muon(matrices), AdamW(embeddings + head), AdamW(scalars)] with the preset's
    learning rates; each group remembers its base lr in 'base_lr' for the schedule."""
    matrices, embeds, scalars = [], [], []
    for name, p in model.named_parameters():
        if is_muon_param(name, p):
            matrices.append(p)
        elif any(k in name for k in EMBED_KEYS):
            embeds.append(p)
        else:
            scalars.append(p)
    betas = (t["adam_beta1"], t["adam_beta2"])
    opts: list[torch.optim.Optimizer] = [
        Muon(matrices, lr=t["matrix_lr"], momentum=t["muon_momentum"], ns_steps=t["muon_ns_steps"],
             weight_decay=t["muon_wd"]),
        torch.optim.AdamW(embeds, lr=t["embed_lr"], betas=betas, weight_decay=t["adam_wd"], eps=1e-8),
        torch.optim.AdamW(scalars, lr=t["scalar_lr"], betas=betas, weight_decay=0.0, eps=1e-8),
    ]
    for opt in opts:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return [o for o in opts if o.param_groups[0]["params"]]


def lr_scale(progress: float, warmup: float, warmdown: float) -> float:
    """Linear warm-up over the first `warmup` of progress, flat, then linear decay to 0
    over the last `warmdown` (all in progress units, i.e. fractions of steps or time)."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if warmdown > 0 and progress > 1 - warmdown:
        return max(0.0, (1 - progress) / warmdown)
    return 1.0


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Momentum ramp used by the records (e.g. 0.92 -> 0.99 over 1500 steps)."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


def apply_schedule(opts: list[torch.optim.Optimizer], scale: float, momentum: float) -> None:
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if isinstance(opt, Muon):
                group["momentum"] = momentum
