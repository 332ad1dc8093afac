"""The engine: run one strategy over the split, through the ledger, into a result.

Data flows one way: model -> (strategy's window plan) -> log-probs -> mixer (n-gram
cache) -> ledger -> per-document sums -> `Result`. Strategies drive the loop; the engine
gives them an `EvalContext` whose `score` and `after_scoring` are the only doors to the
ledger, so every built-in is score-first by construction and the audit can check it.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from evalkit.dist import DistInfo, all_gather_arrays, all_reduce_sum
from evalkit.errors import EvalkitError
from evalkit.ledger import Ledger, LedgerViolation
from evalkit.model import GPT


@dataclass
class EvalData:
    """The validation split as the engine sees it."""

    tokens: np.ndarray  # uint16 (N,) the whole stream, documents starting at BOS
    target_bytes: np.ndarray  # int64 (N,) bytes charged to each target (0 at position 0)
    doc_starts: np.ndarray  # int64 (D,) position of each document's BOS
    source: str = ""  # the --val glob, for reports
    sha256: str = field(default="")  # of the token stream, so results name their data

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(np.ascontiguousarray(self.tokens).tobytes()).hexdigest()

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)

    def doc_of_target(self) -> np.ndarray:
        """int64 (N,) document index owning each target (position 0 -> document 0);
        a document owns its targets up to and including the next document's BOS."""
        pos = np.arange(self.n_tokens, dtype=np.int64)
        return np.maximum(np.searchsorted(self.doc_starts, pos - 1, side="right") - 1, 0)


@dataclass
class Result:
    """One strategy's outcome over the split; `per_doc_*` keep the pairing for ablations."""

    label: str
    val_loss: float  # mean NLL per scored token, nats
    val_bpb: float  # bits per byte over the scored targets
    tokens: int
    bytes: int
    seconds: float
    coverage: dict
    config: dict
    per_doc_nll: np.ndarray  # float64 (D,) nats
    per_doc_bytes: np.ndarray  # int64 (D,)
    per_doc_tokens: np.ndarray  # int64 (D,)
    mixer_memory_bytes: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict:
        return {"strategy": self.label, "val_loss": self.val_loss, "val_bpb": self.val_bpb,
                "tokens": self.tokens, "bytes": self.bytes, "seconds": self.seconds,
                "tokens_per_s": self.tokens_per_s, "coverage": self.coverage, "config": self.config,
                "mixer_memory_bytes": self.mixer_memory_bytes}


class EvalContext:
    """What a strategy may touch while it runs: the model, the tokens, and the ledger
    through `score` (fix scores) and `after_scoring` / `tokens_for_learning` (learn)."""

    def __init__(self, model: GPT, data: EvalData, ledger: Ledger, strategy_name: str, info: DistInfo,
                 mixer=None, share_mixer: bool = False, progress: bool = True):
        self.model, self.data, self.ledger, self.info = model, data, ledger, info
        self.strategy_name, self.mixer, self.share_mixer = strategy_name, mixer, share_mixer
        self.device = info.device
        self.show_progress = progress and info.is_main

    # -- model -------------------------------------------------------------------------
    def autocast(self):
        """bf16 autocast on CUDA; plain float32 on CPU (exactness and CPU speed)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(self, start: int, end: int) -> torch.Tensor:
        """(end - start,) input ids that predict targets start..end-1."""
        return torch.from_numpy(self.data.tokens[start - 1:end - 1].astype(np.int64)).to(self.device)

    def log_probs(self, idx: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) float32 log-softmax of the model (or `model`)."""
        with self.autocast():
            logits = (model or self.model)(idx)
        return torch.log_softmax(logits.float(), dim=-1)

    # -- the two doors to the ledger ------------------------------------------------------
    def score(self, positions: np.ndarray, logp: torch.Tensor) -> np.ndarray:
        """Fix the scores of `positions` from the model's (n, V) log-probs at them, through
        the mixer if any. Returns the float64 (n,) NLLs in nats."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return np.zeros(0)
        targets = torch.from_numpy(self.data.tokens[positions].astype(np.int64)).to(logp.device)
        if self.mixer is None:
            target_logp = logp.gather(1, targets[:, None])[:, 0].double().cpu().numpy()
            rows = None
        else:
            rows = logp.detach().float()
            entropy = -(rows.exp() * rows).sum(-1)  # (n,) the model's entropy, computed once here
            target_logp = self.mixer.score(positions, rows.cpu().numpy(), entropy.double().cpu().numpy())
        probe = self.ledger.wants_probe(positions)
        for i in np.flatnonzero(probe):
            self.ledger.record_probe(positions[i], self.full_distribution(positions[i:i + 1], logp[i:i + 1])[0],
                                     float(target_logp[i]))
        nll = -np.asarray(target_logp, dtype=np.float64)
        self.ledger.record_scores(positions, nll, self.strategy_name)
        return nll

    def full_distribution(self, positions: np.ndarray, logp: torch.Tensor) -> np.ndarray:
        """(n, V) float64 log-distribution the strategy scores from (the audit's slow path)."""
        rows = logp.detach().double().cpu().numpy()
        if self.mixer is None:
            return rows
        return self.mixer.distribution(positions, rows)

    def after_scoring(self, positions: np.ndarray) -> None:
        """Let the mixer learn the tokens at `positions` (all already scored). With a shared
        mixer this is a collective: every rank must call it once per step, maybe with none."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.mixer is None:
            return
        self.ledger.check_learn(positions, self.strategy_name)  # each rank vouches for its own
        if self.share_mixer and self.info.distributed:
            positions = np.sort(np.concatenate(all_gather_arrays(positions, self.info)))
        if positions.size:
            self.mixer.update(positions)

    def tokens_for_learning(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at `positions` for a learning step (TTT); raises unless all scored."""
        positions = np.asarray(positions, dtype=np.int64)
        self.ledger.check_learn(positions, self.strategy_name)
        return self.data.tokens[positions]

    def warmup_tokens(self, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
        """Random token ids for compile/allocator warm-ups: the only legal warm-up input."""
        g = torch.Generator().manual_seed(seed)
        vocab = self.model.cfg.vocab_size
        ids = torch.randint(0, vocab, shape, generator=g)
        self.ledger.record_warmup(self.strategy_name, "random", ids.numel())
        return ids.to(self.device)

    def progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="tok", disable=not self.show_progress, leave=False,
                    dynamic_ncols=True)


def reduce_result(ctx: EvalContext, label: str, seconds: float, config: dict) -> Result:
    """Sum the ledger over ranks (float64) into per-document totals and the headline."""
    data, info, ledger = ctx.data, ctx.info, ctx.ledger
    counts = all_reduce_sum(ledger.score_count, info)
    doc = data.doc_of_target()
    n_docs = len(data.doc_starts)
    local_nll = np.bincount(doc, weights=ledger.nll, minlength=n_docs)
    per_doc_nll = all_reduce_sum(local_nll, info)
    scored = counts > 0
    per_doc_bytes = np.bincount(doc[scored], weights=data.target_bytes[scored], minlength=n_docs).astype(np.int64)
    per_doc_tokens = np.bincount(doc[scored], minlength=n_docs).astype(np.int64)
    total_bytes, total_tokens = int(per_doc_bytes.sum()), int(per_doc_tokens.sum())
    nll = float(per_doc_nll.sum())
    if (counts > 1).any():
        raise LedgerViolation(f"C4 single pass: {label} scored position {int(np.argmax(counts > 1))} "
                              "on more than one rank")
    merged = Ledger(data.n_tokens)
    merged.score_count = counts.astype(np.int32)
    coverage = merged.coverage()
    return Result(label=label, val_loss=nll / max(total_tokens, 1),
                  val_bpb=nll / math.log(2) / max(total_bytes, 1), tokens=total_tokens, bytes=total_bytes,
                  seconds=seconds, coverage=coverage, config=config, per_doc_nll=per_doc_nll,
                  per_doc_bytes=per_doc_bytes, per_doc_tokens=per_doc_tokens,
                  mixer_memory_bytes=int(ctx.mixer.memory_bytes()) if ctx.mixer is not None else 0)


def make_mixer(model: GPT, data: EvalData, spec: str | None):
    """The n-gram mixer for `--ngram spec`, bound to the split (None without a spec)."""
    if not spec:
        return None
    from caches.mixer import parse_ngram_spec  # caches knows no torch; import on demand

    try:
        mixer = parse_ngram_spec(model.cfg.vocab_size, spec)
    except ValueError as e:  # caches raises CacheSpecError(ValueError) for bad specs
        raise EvalkitError(f"--ngram {spec}: {e}") from e
    mixer.bind(data.tokens)
    return mixer


def mixer_label(strategy, mixer) -> str:
    return strategy.label + (f"+{mixer.name}" if mixer is not None else "")


def run_timed(strategy, ctx, model: GPT, device: torch.device) -> float:
    """Wall seconds of `strategy.run(ctx)`, CUDA work included."""
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    strategy.run(ctx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_config(strategy, spec: str | None, share_mixer: bool, info: DistInfo) -> dict:
    return {"strategy": strategy.config(), "ngram": spec, "share_mixer": share_mixer,
            "world_size": info.world_size, "device": str(info.device.type)}


def evaluate(model: GPT, data: EvalData, strategy, info: DistInfo, mixer_spec: str | None = None,
             share_mixer: bool = False, probe_positions: frozenset[int] = frozenset(),
             progress: bool = True) -> tuple[Result, Ledger]:
    """Run `strategy` (evalkit.strategies.Strategy) with an optional n-gram mixer."""
    mixer = make_mixer(model, data, mixer_spec)
    label = mixer_label(strategy, mixer)
    ledger = Ledger(data.n_tokens, probe_positions=probe_positions)
    ctx = EvalContext(model, data, ledger, label, info, mixer, share_mixer, progress)
    seconds = run_timed(strategy, ctx, model, info.device)
    return reduce_result(ctx, label, seconds, run_config(strategy, mixer_spec, share_mixer, info)), ledger
