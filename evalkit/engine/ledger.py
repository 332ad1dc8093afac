"""The ledger: the single place that knows which positions are scored.

Every strategy records each score here, and asks here before any state learns from a
validation token. It raises at once on a rescoring (rule C4) or on a learning read of a
token that is not yet scored (rule C3), naming the position and the strategy. The audit
reads it afterwards: coverage (each target scored exactly once), score order by call
(one `ctx.score` call is one event: the order of positions inside a call means nothing),
learning calls, warm-ups. Probes of full distributions are not requested here (a strategy
can read the ledger): evalkit.engine.probes captures them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class LedgerViolation(RuntimeError):
    """A strategy broke score-first: the message names the rule, position and strategy."""


@dataclass
class Ledger:
    n_tokens: int
    score_count: np.ndarray = field(init=False)  # int32 (N,) times each position was scored
    nll: np.ndarray = field(init=False)  # float64 (N,) -log p(target) in nats, 0 where unscored
    score_event: np.ndarray = field(init=False)  # int64 (N,) call (score or learn) that scored it, -1 unscored
    score_order: np.ndarray = field(init=False)  # int64 (N,) rank in the order positions were passed, -1 unscored
    learn_count: np.ndarray = field(init=False)  # int32 (N,) learning reads per position
    learn_events: list[int] = field(default_factory=list)  # call number of each learning read (check_learn)
    warmups: list[dict] = field(default_factory=list)  # {"strategy", "source", "tokens"}
    _calls: int = 0  # score and learn calls so far, in the order they happened
    _scored: int = 0  # positions scored so far

    def __post_init__(self) -> None:
        n = self.n_tokens
        self.score_count = np.zeros(n, dtype=np.int32)
        self.nll = np.zeros(n, dtype=np.float64)
        self.score_event = np.full(n, -1, dtype=np.int64)
        self.score_order = np.full(n, -1, dtype=np.int64)
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
        self.score_event[positions] = self._calls  # one call, one event, whatever the order inside it
        self.score_order[positions] = self._scored + np.arange(positions.size)  # (a mixer learns in this order)
        self._scored += positions.size
        self._calls += 1

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
        self.learn_events.append(self._calls)
        self._calls += 1

    def record_warmup(self, strategy: str, source: str, tokens: int) -> None:
        """A warm-up (compile, allocator) ran on `tokens` tokens from `source`
        ('random' is the only legal source of warm-up tokens)."""
        self.warmups.append({"strategy": strategy, "source": source, "tokens": int(tokens)})

    def coverage(self) -> dict:
        targets = self.score_count[1:]
        return {"targets": int(targets.size), "scored_once": int((targets == 1).sum()),
                "unscored": int((targets == 0).sum()), "rescored": int((targets > 1).sum()),
                "first_unscored": int(np.argmax(targets == 0)) + 1 if (targets == 0).any() else None}
