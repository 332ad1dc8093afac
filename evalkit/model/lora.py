"""Batched low-rank adapters: one independent LoRA per document in a batch.

`BatchedLoRA` holds B adapters for one linear map, A: (B, r, in) and B: (B, out, r), and
adds `scale * x_b A_b^T B_b^T` to row b of a (B, T, in) input with two batched matmuls.
Rows never mix, so a document's adapter, gradient and (element-wise) optimizer state
depend on that document alone. With B = 1 it is peft's LoRA (tests/test_lora.py holds it
to peft's forward and optimizer step); peft itself keeps one adapter per module, not one
per row, so per-document TTT uses this and the shared phase LoRA uses peft.

Targets (`--ttt-targets`) are short names for evalkit's GPT (q,k,v,o,mlp,lm_head) or
module-name patterns for any model: 'attn.c_q' matches every Linear whose path is
`attn.c_q` or ends in `.attn.c_q` (peft's rule), and shell wildcards work
('blocks.1*.mlp.*'). On a `--model` module the short names mean the challenge script's
names (q -> attn.c_q, lm_head -> lm_head). `AdapterSet` builds one adapter per matched
layer and attaches them only inside `attached()`: through the GPT's `lora` slots, or a
forward hook on a user's nn.Linear.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from typing import Iterator

import torch
from torch import Tensor, nn

from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPT

# Target names the CLI accepts -> the Linear attributes they cover in every block.
TARGETS = {"q": ("attn.c_q",), "k": ("attn.c_k",), "v": ("attn.c_v",), "o": ("attn.proj",),
           "mlp": ("mlp.fc", "mlp.proj"), "lm_head": ()}
_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]+$")


def parse_targets(spec: str) -> tuple[str, ...]:
    """'q,v,lm_head' -> ('q', 'v', 'lm_head'); names or module-name patterns (resolved
    against the model by `resolve_targets`); raises EvalkitError on empty or odd text."""
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [n for n in names if not _PATTERN.match(n)]
    if not names or bad:
        raise EvalkitError(f"--ttt-targets {spec}: bad {bad or 'empty'}; give short names ({','.join(TARGETS)}) "
                           "or module-name patterns, e.g. 'attn.c_q,attn.c_v,lm_head'")
    return names


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear of the model by path (a --model module's paths without 'inner.')."""
    root = model.inner if hasattr(model, "inner") and not isinstance(model, GPT) else model
    return [(n, m) for n, m in root.named_modules() if isinstance(m, nn.Linear)]


def _summary(names: list[str]) -> str:
    """Paths with block indices folded ('blocks.*.attn.c_q'), so the message stays short."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names))
    return ", ".join(folded[:24]) + (f" (+{len(folded) - 24} more)" if len(folded) > 24 else "") or "none"


def resolve_targets(model: nn.Module, targets: tuple[str, ...], flag: str = "--ttt-targets"
                    ) -> tuple[list[tuple[str, nn.Linear]], bool]:
    """((path, Linear) pairs to adapt, whether the GPT's tied head is adapted). Raises one
    line naming the model's Linear modules when a name or pattern matches nothing."""
    linears = linear_modules(model)
    is_gpt = isinstance(model, GPT)
    chosen: dict[str, nn.Linear] = {}
    head = False
    for t in targets:
        if is_gpt and t == "lm_head":  # the GPT's head (tied or not) has its own adapter slot
            head = True
            continue
        if is_gpt and t in TARGETS:
            hits = [(f"blocks.{i}.{a}", b.get_submodule(a)) for i, b in enumerate(model.blocks) for a in TARGETS[t]]
        else:
            pats = TARGETS.get(t) or (t,)
            hits = [(n, m) for n, m in linears if any(_matches(n, p) for p in pats)]
        if not hits:
            raise EvalkitError(f"{flag}: {t!r} matches no Linear module of the model; its Linear modules: "
                               f"{_summary([n for n, _ in linears])}")
        chosen.update(hits)
    order = {n: i for i, (n, _) in enumerate(linears)}  # model order: block by block, as A is drawn
    return sorted(chosen.items(), key=lambda kv: order.get(kv[0], -1)), head


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
    """One `BatchedLoRA` per targeted layer of a model, keyed by the layer's module path."""

    def __init__(self, model: nn.Module, targets: tuple[str, ...], batch: int, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise EvalkitError(f"--ttt-rank {rank}: must be >= 1")
        self.batch = batch
        device = next(model.parameters()).device
        self._linears, head = resolve_targets(model, targets)
        self.layers = nn.ModuleDict()
        for path, lin in self._linears:
            self.layers[path.replace(".", "_")] = BatchedLoRA(batch, lin.in_features, lin.out_features, rank,
                                                              alpha, device)
        if head:
            cfg = model.cfg
            self.layers["head"] = BatchedLoRA(batch, cfg.model_dim, cfg.vocab_size, rank, alpha, device)

    def reset_rows(self, rows: list[int], seeds: list[int], keep_a: bool = False) -> None:
        """Reset the adapters of `rows`; row j's A is drawn from a generator seeded by
        seeds[j] (one per document), layer after layer in a fixed order."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        for layer in self.layers.values():
            layer.reset_rows(rows, gens, keep_a)

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """Attach the adapters (the GPT's `lora` slots, or forward hooks on a user's
        Linear); always detach on exit so a later strategy (or an exception) never sees a
        stale adapter."""
        slots, hooks = [], []
        try:
            for path, lin in self._linears:
                adapter = self.layers[path.replace(".", "_")]
                if hasattr(lin, "lora"):
                    lin.lora = adapter
                    slots.append(lin)
                else:
                    hooks.append(lin.register_forward_hook(_hook(adapter, path)))
            if "head" in self.layers:
                model.head_lora = self.layers["head"]
            yield
        finally:
            for lin in slots:
                lin.lora = None
            for h in hooks:
                h.remove()
            if "head" in self.layers:
                model.head_lora = None


def _hook(adapter: BatchedLoRA, path: str):
    def add_lora(_mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x = args[0]
        if x.dim() != 3:
            raise EvalkitError(f"--ttt-targets: {path} is called with a {tuple(x.shape)} input; per-document "
                               "LoRA needs (B, T, in) rows, one document per row")
        return out + adapter(x).to(out.dtype)
    return add_lora
