"""`ttt`: score-first per-document LoRA test-time training, with optional global phases.

Documents (split at BOS) are queued longest first and taken B at a time; each document
gets its own LoRA (evalkit.lora) and its own optimizer state. A document is read in
chunks of --ttt-chunk targets: chunk c is scored with the current adapter (its context is
up to --ttt-context earlier tokens of the same document), the score goes to the ledger,
and only then does the adapter take --ttt-steps optimizer steps on that chunk; the last
chunk is scored and never trained on. With --ttt-phases the queue is cut at those document
counts: when a prefix is fully scored, every rank pauses and the base weights train on
exactly those documents (evalkit.strategies.ttt_phases), then scoring continues.

Processes: batches are formed globally and batch i of a segment goes to rank i % world,
so every document is computed in the same batch whatever the number of processes. The
canonical order in which an n-gram cache learns is the queue's: segment, batch, chunk
step, document in the batch, position (`batch_positions`, `TTT.learning_order`); the
node's one cache learns in it, so scores do not depend on the rank count.

Overlap: each chunk step's rows go to a host thread (evalkit/engine/overlap.py) that runs
the n-gram cache and the ledger's numbers while this thread trains on the chunk and runs
the next forward. Legal because the ledger fixes a chunk's scores when the engine holds
its own copy of the rows: a score is a function of those rows (made before any step on
the chunk) and of the cache's state from earlier positions only, so the step cannot
change it; learning is allowed once fixed (evalkit/engine/ledger.py).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from evalkit.engine.dist import barrier
from evalkit.engine.overlap import HostScorer
from evalkit.errors import EvalkitError
from evalkit.model.lora import AdapterSet, parse_targets
from evalkit.strategies.registry import Strategy, register
from evalkit.engine.windows import Doc, document_ranges


@dataclass(frozen=True)
class Queue:
    """The global schedule: segments (cut at phase boundaries) of batches of documents."""

    segments: list[list[list[Doc]]]

    def owner(self, batch_in_segment: int, world: int) -> int:
        return batch_in_segment % world


def plan_queue(doc_starts: np.ndarray, n_tokens: int, batch: int, phases: list[int]) -> Queue:
    """Documents longest first (ties by index), cut at the phase boundaries (document
    counts in queue order), each segment split into batches of at most `batch`."""
    ranges = document_ranges(doc_starts, n_tokens)
    docs = sorted(((i, lo, hi) for i, (lo, hi) in enumerate(ranges)), key=lambda d: (d[1] - d[2], d[0]))
    cuts = [0] + [b for b in phases if 0 < b < len(docs)] + [len(docs)]
    segments = []
    for a, b in zip(cuts, cuts[1:]):
        seg = docs[a:b]
        segments.append([seg[i:i + batch] for i in range(0, len(seg), batch)])
    return Queue(segments)


def n_chunks(doc: Doc, chunk: int) -> int:
    return math.ceil((doc[2] - doc[1]) / chunk)


def batch_positions(docs: list[Doc], chunk: int) -> np.ndarray:
    """int64 targets of one batch in the order `doc_batch` scores them: chunk step by
    chunk step, documents in batch order within a step."""
    counts = [n_chunks(d, chunk) for d in docs]
    parts = []
    for c in range(max(counts, default=0)):
        active = docs[:sum(n > c for n in counts)]
        parts += [np.arange(cs, ce, dtype=np.int64) for _, cs, ce in chunk_windows(active, c, chunk, chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def make_optimizer(params, opts: argparse.Namespace) -> torch.optim.Optimizer:
    """A fresh optimizer (fresh state) for one batch of documents. Both are element-wise,
    so row b of a batched adapter moves on document b's gradient alone."""
    if opts.ttt_optimizer == "sgd":
        return torch.optim.SGD(params, lr=opts.ttt_lr, momentum=opts.ttt_momentum, weight_decay=opts.ttt_wd)
    return torch.optim.AdamW(params, lr=opts.ttt_lr, betas=tuple(opts.ttt_betas), eps=opts.ttt_eps,
                             weight_decay=opts.ttt_wd)


def chunk_windows(docs: list[Doc], c: int, chunk: int, context: int) -> list[tuple[int, int, int]]:
    """(window start, chunk start, chunk end) in targets for chunk c of each document."""
    out = []
    for _, lo, hi in docs:
        cs = lo + c * chunk
        ce = min(hi, cs + chunk)
        out.append((max(lo, ce - context), cs, ce))
    return out


def chunk_log_probs(ctx, wins: list[tuple[int, int, int]]) -> torch.Tensor:
    """(k, C, V) log-probs at each window's chunk targets (rows past a short chunk are
    padding). The head runs on the chunk rows only: the context rows need no logits."""
    model, dev = ctx.model, ctx.device
    T = max(ce - ws for ws, _, ce in wins)
    C = max(ce - cs for _, cs, ce in wins)
    idx = torch.zeros((len(wins), T), dtype=torch.long, device=dev)  # right padding is causal-safe
    rows = torch.zeros((len(wins), C), dtype=torch.long, device=dev)
    for j, (ws, cs, ce) in enumerate(wins):
        idx[j, :ce - ws] = ctx.inputs(ws, ce)
        rows[j] = torch.arange(cs - ws, cs - ws + C, device=dev).clamp_max(ce - ws - 1)
    with ctx.autocast():
        h = model.hidden(idx)  # (k, T, d)
        h = h.gather(1, rows[:, :, None].expand(-1, -1, h.size(-1)))  # (k, C, d)
        logits = model.head(h)  # (k, C, V)
    return torch.log_softmax(logits.float(), dim=-1)


def doc_batch(ctx, opts: argparse.Namespace, adapters: AdapterSet, docs: list[Doc],
              host: HostScorer) -> Iterator[np.ndarray]:
    """Score-first TTT over one batch of documents (longest first); yields the positions
    scored at each chunk step, after that step's optimizer update. Each step's rows go to
    `host`, which fixes their scores at once (the ledger holds a copy of the rows) and
    computes them on its thread while the adapters train on the chunk."""
    seed = getattr(opts, "seed", 0)
    adapters.reset_rows(list(range(len(docs))), [seed * 1_000_003 + d[0] for d in docs], opts.ttt_warm_a)
    opt = make_optimizer(adapters.parameters(), opts)
    counts = [n_chunks(d, opts.ttt_chunk) for d in docs]
    with adapters.attached(ctx.model):
        for c in range(counts[0]):
            active = docs[:sum(n > c for n in counts)]  # longest first: the unfinished are a prefix
            wins = chunk_windows(active, c, opts.ttt_chunk, opts.ttt_context)
            learners = [j for j, n in enumerate(counts[:len(active)]) if n > c + 1]  # not the last chunk
            with torch.set_grad_enabled(bool(learners)):
                logp = chunk_log_probs(ctx, wins)
            positions = [np.arange(cs, ce, dtype=np.int64) for _, cs, ce in wins]
            host.submit(np.concatenate(positions),
                        torch.cat([logp[j, :p.size].detach() for j, p in enumerate(positions)]))
            if learners:
                train_steps(ctx, opts, opt, wins, logp, learners, positions)
            yield np.concatenate(positions)


def train_steps(ctx, opts, opt, wins, logp, learners: list[int], positions: list[np.ndarray]) -> None:
    """--ttt-steps updates on the chunk just scored. Losses are per-document means summed
    over documents, so no document's gradient depends on another's length."""
    C = logp.size(1)
    tgt = torch.zeros((len(learners), C), dtype=torch.long, device=ctx.device)
    mask = torch.zeros((len(learners), C), dtype=torch.float32, device=ctx.device)
    for i, j in enumerate(learners):
        toks = ctx.tokens_for_learning(positions[j])  # the ledger vouches their scores are fixed
        tgt[i, :toks.size] = torch.from_numpy(toks.astype(np.int64)).to(ctx.device)
        mask[i, :toks.size] = 1.0 / toks.size
    sel = torch.tensor(learners, device=ctx.device)
    for step in range(opts.ttt_steps):
        if step:  # later steps see the adapter the previous step left
            logp = chunk_log_probs(ctx, wins)
        nll = -logp[sel].gather(2, tgt[:, :, None])[:, :, 0]  # (n, C)
        loss = (nll * mask).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def warm_up(ctx, opts: argparse.Namespace, adapters: AdapterSet) -> None:
    """Allocator/kernel warm-up steps on random tokens (the ledger records them)."""
    for i in range(max(1, opts.ttt_warmup_steps)):
        ids = ctx.warmup_tokens((adapters.batch, min(opts.ttt_context, 2 * opts.ttt_chunk)), seed=i)
        opt = make_optimizer(adapters.parameters(), opts)
        with adapters.attached(ctx.model):
            loss = ctx.model(ids).float().logsumexp(-1).mean()
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)


@register("ttt")
class TTT(Strategy):
    """Per-document batched LoRA TTT, score-first, optionally with global phases."""

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("ttt: per-document LoRA test-time training")
        g.add_argument("--ttt-targets", default="q,v,lm_head",
                       help="adapted layers: q,k,v,o,mlp,lm_head or module-name patterns, e.g. "
                            "'attn.c_q,attn.c_v,lm_head' (evalkit/model/lora.py)")
        g.add_argument("--ttt-rank", type=int, default=8, help="LoRA rank (default 8)")
        g.add_argument("--ttt-alpha", type=float, default=None, help="LoRA alpha; scale = alpha/rank (default rank)")
        g.add_argument("--ttt-optimizer", choices=("adamw", "sgd"), default="adamw")
        g.add_argument("--ttt-lr", type=float, default=3e-3, help="adapter learning rate (default 3e-3)")
        g.add_argument("--ttt-betas", type=float, nargs=2, default=(0.9, 0.999), help="AdamW betas")
        g.add_argument("--ttt-eps", type=float, default=1e-8, help="AdamW eps")
        g.add_argument("--ttt-wd", type=float, default=0.0, help="weight decay")
        g.add_argument("--ttt-momentum", type=float, default=0.0, help="SGD momentum")
        g.add_argument("--ttt-chunk", type=int, default=48, help="targets scored, then trained on, per step")
        g.add_argument("--ttt-context", type=int, default=None,
                       help="max tokens a chunk's window holds (default --seq-len: the artifact's train_seq_len)")
        g.add_argument("--ttt-batch", type=int, default=16, help="documents adapted side by side")
        g.add_argument("--ttt-steps", type=int, default=1, help="optimizer steps per scored chunk")
        g.add_argument("--ttt-warm-a", action="store_true",
                       help="keep each slot's trained A across documents (state then crosses documents)")
        g.add_argument("--ttt-warmup-steps", type=int, default=1,
                       help="warm-up steps on random tokens, before the clock starts (at least 1)")
        from evalkit.strategies.ttt_phases import add_phase_args

        add_phase_args(g)

    def __init__(self, opts: argparse.Namespace):
        super().__init__(opts)
        o = opts
        # Lengths follow the model: a context longer than it was trained on costs time and
        # buys nothing (the default used to be 2048 whatever the artifact).
        o.ttt_context = o.ttt_context or o.seq_len
        o.ttt_phase_seq = o.ttt_phase_seq or o.seq_len
        self.targets = parse_targets(o.ttt_targets)
        for flag, v, lo in (("--ttt-chunk", o.ttt_chunk, 1), ("--ttt-batch", o.ttt_batch, 1),
                            ("--ttt-steps", o.ttt_steps, 1), ("--ttt-rank", o.ttt_rank, 1),
                            ("--ttt-warmup-steps", o.ttt_warmup_steps, 0)):
            if v < lo:
                raise EvalkitError(f"{flag} {v}: must be >= {lo}")
        if o.ttt_context is not None and o.ttt_context < o.ttt_chunk:
            raise EvalkitError(f"--ttt-context {o.ttt_context}: must be >= --ttt-chunk ({o.ttt_chunk})")
        if o.ttt_lr < 0:
            raise EvalkitError(f"--ttt-lr {o.ttt_lr}: must be >= 0")
        from evalkit.strategies.ttt_phases import parse_phases

        self.phases = parse_phases(o.ttt_phases)

    @property
    def label(self) -> str:
        return "ttt" + ("+phases" if self.phases else "")

    @property
    def claims_doc_isolation(self) -> bool:
        # Global phases train on earlier documents and a warm A carries a trained matrix
        # into the next document: either makes a score depend on other documents.
        return not self.phases and not self.opts.ttt_warm_a

    def config(self) -> dict:
        keys = [k for k in vars(self.opts) if k.startswith("ttt_")]
        return {"name": self.name, **{k: getattr(self.opts, k) for k in keys}}

    def _adapters(self, ctx) -> AdapterSet:
        o = self.opts
        alpha = o.ttt_alpha if o.ttt_alpha is not None else float(o.ttt_rank)
        return AdapterSet(ctx.model, self.targets, o.ttt_batch, o.ttt_rank, alpha)

    def _lengths(self, ctx) -> None:
        """Lengths left unset (a strategy built without the CLI resolving --seq-len) follow
        the model's train_seq_len; the model's RoPE follows the chunk context."""
        o = self.opts
        o.ttt_context = o.ttt_context or ctx.model.cfg.train_seq_len
        o.ttt_phase_seq = o.ttt_phase_seq or o.ttt_context
        if o.ttt_context < o.ttt_chunk:
            raise EvalkitError(f"--ttt-context {o.ttt_context}: must be >= --ttt-chunk ({o.ttt_chunk})")
        ctx.model.set_context_len(o.ttt_context)

    def learning_order(self, data) -> np.ndarray:
        """int64 targets in the order an n-gram cache learns them: the queue's."""
        queue = plan_queue(data.doc_starts, data.n_tokens, self.opts.ttt_batch, self.phases)
        parts = [batch_positions(b, self.opts.ttt_chunk) for seg in queue.segments for b in seg]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def warmup(self, ctx) -> None:
        """Forward and backward steps on random tokens through throw-away adapters, before
        the clock starts; the base weights are put back afterwards."""
        from evalkit.strategies.ttt_phases import restoring_base

        self._lengths(ctx)
        with restoring_base(ctx.model):
            warm_up(ctx, self.opts, self._adapters(ctx))

    def run(self, ctx) -> None:
        from evalkit.strategies.ttt_phases import global_phase, restoring_base

        o, info = self.opts, ctx.info
        self._lengths(ctx)
        queue = plan_queue(ctx.data.doc_starts, ctx.data.n_tokens, o.ttt_batch, self.phases)
        total = ctx.data.n_tokens - 1
        with restoring_base(ctx.model), ctx.progress(total, ctx.strategy_name) as bar, HostScorer(ctx) as host:
            adapters = self._adapters(ctx)
            # Every slot starts from a drawn A (what --ttt-warm-a then keeps).
            adapters.reset_rows(list(range(o.ttt_batch)), [getattr(o, "seed", 0) * 7919 - j - 1
                                                          for j in range(o.ttt_batch)])
            scored: list[tuple[list[Doc], int]] = []  # (batch, owner rank) fully scored so far
            for s, segment in enumerate(queue.segments):
                self._segment(ctx, adapters, segment, queue, bar, host)
                scored += [(b, queue.owner(i, info.world_size)) for i, b in enumerate(segment)]
                if s + 1 < len(queue.segments):
                    barrier(info)
                    global_phase(ctx, o, scored, s)

    def _segment(self, ctx, adapters: AdapterSet, segment: list[list[Doc]], queue: Queue, bar,
                 host: HostScorer) -> None:
        """Score this rank's batches through `host` (the others' only move the progress bar)."""
        info = ctx.info
        for k, batch in enumerate(segment):
            if queue.owner(k, info.world_size) == info.rank:
                for positions in doc_batch(ctx, self.opts, adapters, batch, host):
                    bar.update(positions.size)
            else:
                bar.update(sum(hi - lo for _, lo, hi in batch))
