"""Global TTT phases: train the base weights on exactly the documents scored so far.

Called by `ttt` when a prefix of its document queue is fully scored (all ranks, after a
barrier). Data parallel and world-size independent: the scored batches are grouped, in
queue order, --ttt-phase-group at a time into one optimizer step each; a batch's
gradient is computed by the rank that scored it (its ledger vouches for the tokens), in
float32 per micro-batch, summed in float64 and all-reduced in float64, so N processes
take the same steps as one. Two modes: full-parameter SGD with momentum, or one shared
LoRA injected with peft (LoraConfig / inject_adapter_in_model) and merged afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import math
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from evalkit.errors import EvalkitError
from evalkit.engine.windows import Doc
from evalkit.model.lora import parse_targets, resolve_targets



def add_phase_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--ttt-phases", default="", help="document counts (queue order) after which the base "
                   "weights train on the scored documents, e.g. 666,1333,2000")
    g.add_argument("--ttt-phase-mode", choices=("sgd", "lora"), default="sgd",
                   help="full-parameter SGD, or one shared peft LoRA merged after each phase")
    g.add_argument("--ttt-phase-epochs", type=int, default=1, help="passes over the scored documents")
    g.add_argument("--ttt-phase-lr", type=float, default=3e-3, help="peak lr, cosine-decayed within a phase")
    g.add_argument("--ttt-phase-momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--ttt-phase-clip", type=float, default=1.0, help="global grad-norm clip (0: none)")
    g.add_argument("--ttt-phase-seq", type=int, default=None, help="tokens per training sequence (documents "
                   "are cut, never joined; default --seq-len: the artifact's train_seq_len)")
    g.add_argument("--ttt-phase-group", type=int, default=4,
                   help="scored batches per global step (a multiple of the process count balances ranks)")
    g.add_argument("--ttt-phase-rank", type=int, default=16, help="lora mode: shared LoRA rank")
    g.add_argument("--ttt-phase-targets", default="q,v,mlp",
                   help="lora mode: layers (q,k,v,o,mlp, or module-name patterns like attn.c_q)")


def parse_phases(spec: str) -> list[int]:
    """'666,1333,2000' -> [666, 1333, 2000] (strictly increasing, positive)."""
    if not spec.strip():
        return []
    try:
        vals = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise EvalkitError(f"--ttt-phases {spec}: use comma-separated document counts, e.g. 666,1333,2000")
    if any(v < 1 for v in vals) or any(b <= a for a, b in zip(vals, vals[1:])):
        raise EvalkitError(f"--ttt-phases {spec}: counts must be positive and strictly increasing")
    return vals


@contextlib.contextmanager
def restoring_base(model: torch.nn.Module) -> Iterator[None]:
    """Freeze the base weights for the per-document adapters (no base gradients to pay
    for) and put them back afterwards: phases edit them in place, and the next strategy
    scored from the same loaded model must see the artifact's weights."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        model.load_state_dict(saved)
        for p, flag in flags:
            p.requires_grad_(flag)


def doc_sequences(ctx, docs: list[Doc], seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) pieces of at most `seq` tokens, cut inside documents. Every
    target comes through the ledger; an input is the document's BOS or an earlier target."""
    out = []
    for _, lo, hi in docs:
        targets = torch.from_numpy(ctx.tokens_for_learning(np.arange(lo, hi)).astype(np.int64))
        inputs = torch.cat([ctx.inputs(lo, lo + 1).cpu(), targets[:-1]])
        for a in range(0, hi - lo, seq):
            out.append((inputs[a:a + seq], targets[a:a + seq]))
    return out


def batch_grad_sum(ctx, params: list[torch.nn.Parameter], docs: list[Doc], opts) -> list[torch.Tensor]:
    """float64 gradients of the summed NLL over one scored batch's documents."""
    acc = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in params]
    pieces = doc_sequences(ctx, docs, opts.ttt_phase_seq)
    for i in range(0, len(pieces), 8):  # micro-batches of 8 pieces: bounded activation memory
        part = pieces[i:i + 8]
        T = max(x.numel() for x, _ in part)
        idx = torch.zeros((len(part), T), dtype=torch.long)
        tgt = torch.full((len(part), T), -100, dtype=torch.long)  # -100: cross_entropy ignores padding
        for j, (x, y) in enumerate(part):
            idx[j, :x.numel()], tgt[j, :y.numel()] = x, y
        with ctx.autocast():
            logits = ctx.model(idx.to(ctx.device))
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt.to(ctx.device).flatten(), reduction="sum")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for a, g in zip(acc, grads):
            if g is not None:
                a += g.double()
    return acc


def _flat_all_reduce(tensors: list[torch.Tensor], info) -> list[torch.Tensor]:
    if not info.distributed:
        return tensors
    flat = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return list(torch.split(flat, [t.numel() for t in tensors]))


def train_phase(ctx, opts, params: list[torch.nn.Parameter], scored: list[tuple[list[Doc], int]]) -> None:
    """Cosine-decayed SGD over the scored batches, one step per group, grads all-reduced."""
    G = opts.ttt_phase_group
    groups = [scored[i:i + G] for i in range(0, len(scored), G)]
    total = opts.ttt_phase_epochs * len(groups)
    opt = torch.optim.SGD(params, lr=opts.ttt_phase_lr, momentum=opts.ttt_phase_momentum)
    for t in range(total):
        group = groups[t % len(groups)]
        for pg in opt.param_groups:
            pg["lr"] = opts.ttt_phase_lr * 0.5 * (1 + math.cos(math.pi * t / total))
        grads = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in params]
        for docs, owner in group:
            if owner == ctx.info.rank:
                grads = [a + b for a, b in zip(grads, batch_grad_sum(ctx, params, docs, opts))]
        grads = _flat_all_reduce(grads, ctx.info)
        n_tok = sum(hi - lo for docs, _ in group for _, lo, hi in docs)
        for p, g in zip(params, grads):
            p.grad = (g.view(p.shape) / n_tok).to(p.dtype)
        if opts.ttt_phase_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, opts.ttt_phase_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)


def global_phase(ctx, opts: argparse.Namespace, scored: list[tuple[list[Doc], int]], phase: int) -> None:
    """One phase on every rank: same steps, same float64-reduced gradients."""
    model = ctx.model
    if opts.ttt_phase_mode == "sgd":
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        try:
            train_phase(ctx, opts, params, scored)
        finally:
            for p in params:
                p.requires_grad_(False)
        return
    with shared_lora(model, opts, seed=getattr(opts, "seed", 0) * 7919 + phase) as params:
        train_phase(ctx, opts, params, scored)


@contextlib.contextmanager
def shared_lora(model: torch.nn.Module, opts, seed: int) -> Iterator[list[torch.nn.Parameter]]:
    """Inject one peft LoRA into the targeted Linears, yield its parameters, then merge
    it into the base weights and unwrap the layers (the model's structure is restored)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    names = parse_targets(opts.ttt_phase_targets)
    found, head = resolve_targets(model, names, "--ttt-phase-targets")
    if head:
        raise EvalkitError(f"--ttt-phase-targets {opts.ttt_phase_targets}: the GPT's head is not a Linear peft "
                           "can wrap; choose from q,k,v,o,mlp or module-name patterns")
    modules = [path for path, _ in found]  # peft matches a key ending in '.' + path
    torch.manual_seed(seed)  # peft draws A from the global RNG: same draw on every rank
    config = LoraConfig(r=opts.ttt_phase_rank, lora_alpha=opts.ttt_phase_rank, lora_dropout=0.0,
                        target_modules=modules)
    inject_adapter_in_model(config, model)
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    try:
        yield [p for _, m in wrapped for n, p in m.named_parameters() if "lora_" in n]
        with torch.no_grad():
            for _, m in wrapped:
                m.merge()
    finally:
        for name, m in wrapped:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, m.get_base_layer())
        for p in model.parameters():
            p.requires_grad_(False)
