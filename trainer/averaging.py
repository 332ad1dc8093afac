"""Weight averaging: EMA (pr372, pr810, pr1938) and SWA over the warmdown (pr198, pr451).

Both keep float32 copies on the parameters' device (pr810 keeps its EMA on the GPU to
avoid host copies every step) and hand back a state dict for export.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            self.shadow[k].lerp_(v.detach().float(), 1 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}


class SWA:
    """Uniform average of snapshots taken every `every` steps once the LR scale has
    dropped below `start_scale` (pr198: < 0.5, every 200 steps; pr451: every 30)."""

    def __init__(self, every: int, start_scale: float):
        self.every, self.start_scale = every, start_scale
        self.sum: dict[str, Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def maybe_update(self, model: nn.Module, step: int, scale: float) -> None:
        if scale >= self.start_scale or step % self.every:
            return
        state = model.state_dict()
        if self.sum is None:
            self.sum = {k: v.detach().float().clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                self.sum[k].add_(v.detach().float())
        self.count += 1

    def state_dict(self) -> dict[str, Tensor] | None:
        """The average, or None when no snapshot was taken (export the live weights)."""
        if self.sum is None:
            return None
        return {k: v / self.count for k, v in self.sum.items()}
