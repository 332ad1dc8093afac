"""What a strategy sees: the split (`EvalData`) and its one door to the ledger (`EvalContext`).

`EvalContext.score` fixes scores (model log-probs -> optional n-gram cache -> ledger): the
node's one table (`table`, evalkit.engine.nodetable: its owner learns every position in the
strategy's learning order, right after computing what that position's score needs), or this
process's own `mixer` (the audit's path, learning each position right after scoring it);
`fix_scores` splits it in two for the overlap (evalkit/engine/overlap.py).
`after_scoring` / `tokens_for_learning` are the other ways state may learn from a token, so
every built-in is score-first by construction and the audit can check it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from evalkit.engine import probes
from evalkit.engine.dist import DistInfo
from evalkit.engine.ledger import Ledger
from evalkit.engine.mixing import score_through_mixer, score_through_table
from evalkit.model.gpt import GPT


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

    def context_starts(self) -> np.ndarray:
        """int64 (N,) the start (BOS) of the document owning each target: the tokens a
        document-local context of that target may read (doc_of_target)."""
        return self.doc_starts[self.doc_of_target()]

    def doc_of_target(self) -> np.ndarray:
        """int64 (N,) document index owning each target (position 0 -> document 0);
        a document owns its targets up to and including the next document's BOS."""
        pos = np.arange(self.n_tokens, dtype=np.int64)
        return np.maximum(np.searchsorted(self.doc_starts, pos - 1, side="right") - 1, 0)


class EvalContext:
    """What a strategy may touch while it runs: the model, the tokens, and the ledger
    through `score` (fix scores) and `after_scoring` / `tokens_for_learning` (learn)."""

    def __init__(self, model: GPT, data: EvalData, ledger: Ledger, strategy_name: str, info: DistInfo,
                 mixer=None, progress: bool = True, table=None):
        self.model, self.data, self.ledger, self.info = model, data, ledger, info
        self.strategy_name, self.mixer, self.table = strategy_name, mixer, table
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

    def inputs_batch(self, spans: list[tuple[int, int]]) -> torch.Tensor:
        """(B, T) input ids for target spans [start, end), right-padded with 0 (causal: padding
        never reaches earlier positions); built on the host and copied to the device once
        (pinned and asynchronous on CUDA), not one window at a time."""
        T = max(end - start for start, end in spans)
        idx = np.zeros((len(spans), T), dtype=np.int64)  # (B, T)
        for j, (start, end) in enumerate(spans):
            idx[j, :end - start] = self.data.tokens[start - 1:end - 1]
        return self.to_device(idx)

    def to_device(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def log_probs(self, idx: torch.Tensor, model: torch.nn.Module | None = None,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> float32 log-softmax of the model (or `model`): (B, T, V), or (n, V)
        at `rows`, (n,) flat indices into B*T: the head and softmax run on those rows only.
        The head runs in float32 under autocast too (GPT.log_probs; README "GPU")."""
        with self.autocast():
            return (model or self.model).log_probs(idx, rows)

    # -- the two doors to the ledger ------------------------------------------------------
    def score(self, positions: np.ndarray, logp: torch.Tensor) -> np.ndarray:
        """Fix the scores of `positions` from the model's (n, V) log-probs at them, through
        the node's table or this process's mixer if any (a cache learns each position right
        after computing what its score needs: evalkit/engine/mixing.py). Returns the float64
        (n,) NLLs in nats."""
        return self.fix_scores(positions, logp, copy=False)()

    def fix_scores(self, positions: np.ndarray, logp: torch.Tensor, copy: bool = True) -> Callable[[], np.ndarray]:
        """`score` in two halves. Now, on the caller's thread: the ledger records the scores
        of `positions` as fixed (and the cache as learning them right after: this process's
        mixer, or the node's table at the steps of its timeline, known before its aux is),
        and the rows are detached and, with `copy`, copied, so nothing the caller does later
        (a training step, an in-place edit) can reach them. Returned: the half that computes
        the NLLs from those rows (cache, audit probes) and writes them to the ledger; run the
        halves in the order they were fixed, on any one thread (evalkit/engine/overlap.py).
        From the fix on, the tokens may be learned from (`tokens_for_learning`)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return lambda: np.zeros(0)
        node = self.table is not None and self.mixer is None
        steps = self.table.steps_of(positions) if node else None  # where the node's cache learns them: known now
        self.ledger.fix(positions, self.strategy_name)
        if self.mixer is not None:  # the cache learns these positions right after scoring them
            self.ledger.check_learn(positions, self.strategy_name, cache=True)
        elif node:  # the node's cache learns them at these steps of its one timeline
            self.ledger.record_node_steps(positions, steps, self.strategy_name)
        rows = logp.detach().clone() if copy else logp.detach()
        return functools.partial(self._settle, positions, rows, steps)

    def _settle(self, positions: np.ndarray, logp: torch.Tensor, steps: np.ndarray | None) -> np.ndarray:
        node = steps is not None
        targets = torch.from_numpy(self.data.tokens[positions].astype(np.int64)).to(logp.device)
        cap = probes.active()  # the audit's request, invisible to the strategy
        probe = np.flatnonzero(cap.wanted(positions)) if cap is not None else np.zeros(0, np.int64)
        if self.mixer is not None:
            target_logp, dists = score_through_mixer(self.mixer, positions, logp, targets, probe)
        elif node:
            if probe.size:  # the engine builds no table while the audit captures (loop.make_scorers)
                raise RuntimeError("probes need this process's own mixer, not the node's table")
            target_logp = score_through_table(self.table, positions, steps, logp, targets)
            dists = {}
        else:
            target_logp = logp.gather(1, targets[:, None])[:, 0].double().cpu().numpy()
            dists = {int(positions[i]): probes.probe_rows(logp[i:i + 1])[0] for i in probe}
        if cap is not None:
            for i in probe:
                p = int(positions[i])
                cap.probes[p] = probes.Probe(np.asarray(dists[p], np.float64), float(target_logp[i]),
                                             str(logp.dtype).split(".")[-1], cap.own.get(p))
        nll = -np.asarray(target_logp, dtype=np.float64)
        self.ledger.settle(positions, nll, self.strategy_name)
        if logp.is_cuda:  # read on this thread's stream: its memory waits for that work (overlap.py)
            logp.record_stream(torch.cuda.current_stream(logp.device))
        if cap is not None:
            cap.after_scores(positions, self.ledger)  # may stop an audit re-run (probes.AuditStop)
        return nll

    def after_scoring(self, positions: np.ndarray) -> None:
        """Door for state other than the n-gram cache, which learns on its own timeline (see
        `score`): the built-ins keep none, and a plugin's own state learns here, from
        `positions` it scored."""
        self.ledger.check_learn(np.asarray(positions, dtype=np.int64), self.strategy_name)

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
