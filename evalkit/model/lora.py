"""Batched low-rank adapters: one independent LoRA per document in a batch.

`BatchedLoRA` holds B adapters for one linear map, A: (B, r, in) and B: (B, out, r), and
adds `scale * x_b A_b^T B_b^T` to row b of a (B, T, in) input with two batched matmuls.
Rows never mix, so a document's adapter, gradient and (element-wise) optimizer state
depend on that document alone. With B = 1 it is peft's LoRA (tests/test_lora.py holds it
to peft's forward and optimizer step). `AdapterSet` builds one per target layer of a
`GPT` and attaches them to the model's `lora` hooks only inside `attached()`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import Tensor, nn

from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPT

# Target names the CLI accepts -> the Linear attributes they cover in every block.
TARGETS = {"q": ("attn.c_q",), "k": ("attn.c_k",), "v": ("attn.c_v",), "o": ("attn.proj",),
           "mlp": ("mlp.fc", "mlp.proj"), "lm_head": ()}


def parse_targets(spec: str) -> tuple[str, ...]:
    """'q,v,lm_head' -> ('q', 'v', 'lm_head'); raises EvalkitError on unknown names."""
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [n for n in names if n not in TARGETS]
    if not names or bad:
        raise EvalkitError(f"--ttt-targets {spec}: unknown {bad or 'empty'}; choose from {','.join(TARGETS)}")
    return names


def init_a_(a: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """peft's default A init (kaiming-uniform with a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)))
    drawn from `generator` so a document's draw does not depend on its batch-mates."""
    bound = 1.0 / math.sqrt(a.size(-1))
    with torch.no_grad():
        draw = torch.rand(a.shape, generator=generator, dtype=torch.float32) * (2 * bound) - bound
        a.copy_(draw.to(a.device, a.dtype))
    return a


class BatchedLoRA(nn.Module):
    """B adapters for one linear map in_features -> out_features, applied row-wise."""

    def __init__(self, batch: int, in_features: int, out_features: int, rank: int, alpha: float,
                 device: torch.device | None = None):
        super().__init__()
        self.scale = alpha / rank  # peft's scaling: alpha / r
        self.A = nn.Parameter(torch.zeros(batch, rank, in_features, device=device))
        self.B = nn.Parameter(torch.zeros(batch, out_features, rank, device=device))

    def forward(self, x: Tensor) -> Tensor:
        """(n, T, in) -> (n, T, out) with the first n adapters: a strategy drops finished
        documents from the end of its (longest-first) batch instead of padding them."""
        n = x.size(0)
        a, b = self.A[:n].to(x.dtype), self.B[:n].to(x.dtype)
        return torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2)) * self.scale

    def reset_rows(self, rows: list[int], generators: list[torch.Generator], keep_a: bool = False) -> None:
        """Fresh adapters in `rows`: B zeroed (the adapted model starts as the base model),
        A re-drawn from each row's generator unless `keep_a`."""
        with torch.no_grad():
            for row, gen in zip(rows, generators):
                self.B[row].zero_()
                if not keep_a:
                    init_a_(self.A[row], gen)


class AdapterSet(nn.Module):
    """One `BatchedLoRA` per targeted layer of a GPT, keyed by the layer's module path."""

    def __init__(self, model: GPT, targets: tuple[str, ...], batch: int, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise EvalkitError(f"--ttt-rank {rank}: must be >= 1")
        self.batch = batch
        device = next(model.parameters()).device
        self.layers = nn.ModuleDict()
        for path, lin in self._hooked_linears(model, targets):
            self.layers[path.replace(".", "_")] = BatchedLoRA(batch, lin.in_features, lin.out_features, rank,
                                                              alpha, device)
        if "lm_head" in targets:
            cfg = model.cfg
            self.layers["head"] = BatchedLoRA(batch, cfg.model_dim, cfg.vocab_size, rank, alpha, device)
        self._paths = [p for p, _ in self._hooked_linears(model, targets)]

    @staticmethod
    def _hooked_linears(model: GPT, targets: tuple[str, ...]) -> Iterator[tuple[str, nn.Module]]:
        for i, block in enumerate(model.blocks):
            for t in targets:
                for attr in TARGETS[t]:
                    yield f"blocks.{i}.{attr}", block.get_submodule(attr)

    def reset_rows(self, rows: list[int], seeds: list[int], keep_a: bool = False) -> None:
        """Reset the adapters of `rows`; row j's A is drawn from a generator seeded by
        seeds[j] (one per document), layer after layer in a fixed order."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        for layer in self.layers.values():
            layer.reset_rows(rows, gens, keep_a)

    @contextlib.contextmanager
    def attached(self, model: GPT) -> Iterator[None]:
        """Set the model's lora hooks to these adapters; always detach on exit so a later
        strategy (or an exception) never sees a stale adapter."""
        hooked = [(model.get_submodule(p), self.layers[p.replace(".", "_")]) for p in self._paths]
        try:
            for lin, adapter in hooked:
                lin.lora = adapter
            if "head" in self.layers:
                model.head_lora = self.layers["head"]
            yield
        finally:
            for lin, _ in hooked:
                lin.lora = None
            model.head_lora = None
