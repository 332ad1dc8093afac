"""The ledger: the single place that knows which positions are scored.

Every strategy records each score here, and asks here before any state learns from a
validation token. It raises at once on a rescoring (rule C4) or on a learning read of a
token that is not yet scored (rule C3), naming the position and the strategy. The audit
reads it afterwards: coverage (each target scored exactly once), score order, probes of
full distributions, warm-ups.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class LedgerViolation(RuntimeError):
    """A strategy broke score-first: the message names the rule, position and strategy."""


@dataclass
class Probe:
    """A full distribution captured at the moment a position was scored (for the audit)."""

    logp: np.ndarray  # float64 (V,) log-probabilities over the whole alphabet
    fast_logp: float  # what the fast path recorded for the target


@dataclass
class Ledger:
    n_tokens: int
    probe_positions: frozenset[int] = frozenset()  # positions whose full distribution the audit wants
    score_count: np.ndarray = field(init=False)  # int32 (N,) times each position was scored
    nll: np.ndarray = field(init=False)  # float64 (N,) -log p(target) in nats, 0 where unscored
    score_event: np.ndarray = field(init=False)  # int64 (N,) order in which positions were scored, -1 unscored
    learn_count: np.ndarray = field(init=False)  # int32 (N,) learning reads per position
    probes: dict[int, Probe] = field(default_factory=dict)
    warmups: list[dict] = field(default_factory=list)  # {"strategy", "source", "tokens"}
    _events: int = 0

    def __post_init__(self) -> None:
        n = self.n_tokens
        self.score_count = np.zeros(n, dtype=np.int32)
        self.nll = np.zeros(n, dtype=np.float64)
        self.score_event = np.full(n, -1, dtype=np.int64)
        self.learn_count = np.zeros(n, dtype=np.int32)

    def record_scores(self, positions: np.ndarray, nll: np.ndarray, strategy: str) -> None:
        """Fix the scores of `positions` (int64, no repeats). Raises on position 0, out-of-range
        positions and rescoring."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return
        if positions.min() < 1 or positions.max() >= self.n_tokens:
            bad = positions[(positions < 1) | (positions >= self.n_tokens)][0]
            raise LedgerViolation(f"{strategy}: position {bad} is not a target of this split (1..{self.n_tokens - 1})")
        uniq, counts = np.unique(positions, return_counts=True)
        again = np.concatenate([positions[self.score_count[positions] > 0], uniq[counts > 1]])
        if again.size:
            raise LedgerViolation(f"C4 single pass: {strategy} scored position {int(again[0])} a second time")
        self.score_count[positions] += 1
        self.nll[positions] = nll
        self.score_event[positions] = self._events + np.arange(positions.size)
        self._events += positions.size

    def check_learn(self, positions: np.ndarray, strategy: str) -> None:
        """Call before any state learns from the tokens at `positions`."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return
        unscored = positions[self.score_count[positions] == 0]
        if unscored.size:
            raise LedgerViolation(f"C3 score before update: {strategy} read position {int(unscored[0])} "
                                  "for learning before it was scored")
        self.learn_count[positions] += 1

    def record_warmup(self, strategy: str, source: str, tokens: int) -> None:
        """A warm-up (compile, allocator) ran on `tokens` tokens from `source`
        ('random' is the only legal source of warm-up tokens)."""
        self.warmups.append({"strategy": strategy, "source": source, "tokens": int(tokens)})

    def wants_probe(self, positions: np.ndarray) -> np.ndarray:
        """Boolean mask of `positions` whose full distribution the audit asked for."""
        if not self.probe_positions:
            return np.zeros(len(positions), dtype=bool)
        return np.isin(positions, np.fromiter(self.probe_positions, dtype=np.int64))

    def record_probe(self, position: int, logp: np.ndarray, fast_logp: float) -> None:
        self.probes[int(position)] = Probe(np.asarray(logp, dtype=np.float64), float(fast_logp))

    def coverage(self) -> dict:
        targets = self.score_count[1:]
        return {"targets": int(targets.size), "scored_once": int((targets == 1).sum()),
                "unscored": int((targets == 0).sum()), "rescored": int((targets > 1).sum()),
                "first_unscored": int(np.argmax(targets == 0)) + 1 if (targets == 0).any() else None}
