"""The ledger: the single place that knows which positions are scored.

Every strategy records each score here, and asks here before any state learns from a
validation token. It raises at once on a rescoring (rule C4) or on a learning read of a
token that is not yet scored (rule C3), naming the position and the strategy. The audit
reads it afterwards: coverage (each target scored exactly once), score order by call
(one `ctx.score` call is one event: the order of positions inside a call means nothing),
learning calls, warm-ups. Probes of full distributions are not requested here (a strategy
can read the ledger): evalkit.engine.probes captures them.

A score is *fixed* when the rows that determine it exist as the engine's own copy
(`fix`); its number may be computed later, on another thread (`settle`: the overlap of
evalkit/engine/overlap.py). A fixed score can no longer change, so learning from its
token is allowed from then on: `check_learn` asks for fixed, not for settled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _repeats(positions: np.ndarray) -> np.ndarray:
    """Positions that occur more than once in `positions`. Why the first test: plan order is
    increasing within a call almost always, and then there are none (O(n), no sort; the
    sort was a third of the ledger's time per call)."""
    if positions.size < 2 or bool((positions[1:] > positions[:-1]).all()):
        return positions[:0]
    uniq, counts = np.unique(positions, return_counts=True)
    return uniq[counts > 1]


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
    # The n-gram cache's timeline: the step at which the cache that scored each position here
    # learned it, right after computing that score's aux (-1: not scored through a cache). A
    # rank's own cache (`check_learn(cache=True)`) or the node's one table, whose single
    # timeline is the strategy's learning order (`record_node_steps`, evalkit.engine.nodetable).
    cache_seq: np.ndarray = field(init=False)  # int64 (N,)
    pending: np.ndarray = field(init=False)  # bool (N,) fixed, its NLL not yet computed (`settle`)
    learn_events: list[int] = field(default_factory=list)  # call number of each learning read (check_learn)
    cache_learn_events: list[int] = field(default_factory=list)  # those of them by the n-gram cache (cache=True)
    warmups: list[dict] = field(default_factory=list)  # {"strategy", "source", "tokens"}
    _calls: int = 0  # score and learn calls so far, in the order they happened
    _scored: int = 0  # positions scored so far
    _cache_events: int = 0
    _cache_last: int = -1  # the latest timeline step this rank scored from

    def __post_init__(self) -> None:
        n = self.n_tokens
        self.score_count = np.zeros(n, dtype=np.int32)
        self.nll = np.zeros(n, dtype=np.float64)
        self.score_event = np.full(n, -1, dtype=np.int64)
        self.score_order = np.full(n, -1, dtype=np.int64)
        self.learn_count = np.zeros(n, dtype=np.int32)
        self.cache_seq = np.full(n, -1, dtype=np.int64)
        self.pending = np.zeros(n, dtype=bool)

    def record_scores(self, positions: np.ndarray, nll: np.ndarray, strategy: str) -> None:
        """Fix the scores of `positions` (int64, no repeats) and write them. Raises on
        position 0, out-of-range positions and rescoring."""
        self.fix(positions, strategy)
        self.settle(positions, nll, strategy)

    def fix(self, positions: np.ndarray, strategy: str) -> None:
        """The scores of `positions` are fixed: the rows that determine them are held where
        nothing can change them. One score event; learning from these tokens is allowed from
        now on. Raises on position 0, out-of-range positions and rescoring."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return
        if positions.min() < 1 or positions.max() >= self.n_tokens:
            bad = positions[(positions < 1) | (positions >= self.n_tokens)][0]
            raise LedgerViolation(f"{strategy}: position {bad} is not a target of this split (1..{self.n_tokens - 1})")
        again = np.concatenate([positions[self.score_count[positions] > 0], _repeats(positions)])
        if again.size:
            raise LedgerViolation(f"C4 single pass: {strategy} scored position {int(again[0])} a second time")
        self.check_unlearned(positions, strategy)
        self.score_count[positions] += 1
        self.pending[positions] = True
        self.score_event[positions] = self._calls  # one call, one event, whatever the order inside it
        self.score_order[positions] = self._scored + np.arange(positions.size)  # (a mixer learns in this order)
        self._scored += positions.size
        self._calls += 1

    def settle(self, positions: np.ndarray, nll: np.ndarray, strategy: str) -> None:
        """Write the NLLs of fixed scores (any thread; touches only these positions' entries)."""
        positions = np.asarray(positions, dtype=np.int64)
        bad = positions[~self.pending[positions]]
        if bad.size:
            raise LedgerViolation(f"{strategy}: settled position {int(bad[0])}, which was not fixed or already settled")
        self.nll[positions] = nll
        self.pending[positions] = False

    def check_settled(self, strategy: str) -> None:
        """Raise if a fixed score was never computed (its NLL would count as 0)."""
        left = np.flatnonzero(self.pending)
        if left.size:
            raise LedgerViolation(f"{strategy}: position {int(left[0])} was fixed but its score never computed "
                                  f"({left.size} such positions)")

    def check_unlearned(self, positions: np.ndarray, strategy: str) -> None:
        """Raise if the cache already learned any of `positions` (a score from that state
        would have seen its own token); `fix` asks, after checking their range."""
        learned = positions[self.cache_seq[positions] >= 0]
        if learned.size:
            raise LedgerViolation(f"C3 score before update: {strategy} scored position {int(learned[0])} after "
                                  "its cache had learned it")

    def check_learn(self, positions: np.ndarray, strategy: str, cache: bool = False) -> None:
        """Call before any state learns from the tokens at `positions`; `cache=True` when
        that state is the n-gram cache (its learning order joins the cache timeline)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return
        unscored = positions[self.score_count[positions] == 0]
        if unscored.size:
            raise LedgerViolation(f"C3 score before update: {strategy} read position {int(unscored[0])} "
                                  "for learning before it was scored")
        self.learn_count[positions] += 1
        self.learn_events.append(self._calls)
        if cache:
            self.cache_learn_events.append(self._calls)
        self._calls += 1
        if cache:
            self._cache_learned(positions, strategy)

    def record_node_steps(self, positions: np.ndarray, steps: np.ndarray, strategy: str) -> None:
        """This rank scored `positions` from aux the node's one cache computed at `steps` of
        its timeline, each just before learning that position (the kernel's order). The
        rank must score in that timeline's order: a call may not reach back before a step
        this rank already scored from, or that earlier score came from a state holding a
        position scored only now. With every step scored by some rank (loop.py checks it
        when all are done), the timeline is then a one-process run, score before learn."""
        positions, steps = np.asarray(positions, dtype=np.int64), np.asarray(steps, dtype=np.int64)
        if positions.size == 0:
            return
        if int(steps.min()) <= self._cache_last:
            i = int(np.argmin(steps))
            raise LedgerViolation(f"C3 score before update: {strategy} scored position {int(positions[i])} after its "
                                  f"cache had learned it: the cache's timeline learned it (step {int(steps[i])}) "
                                  f"before a position this rank scored earlier (step {self._cache_last})")
        self.cache_seq[positions] = steps
        self._cache_last = int(steps.max())

    def _cache_learned(self, positions: np.ndarray, strategy: str) -> None:
        again = np.concatenate([positions[self.cache_seq[positions] >= 0], _repeats(positions)])
        if again.size:
            raise LedgerViolation(f"C4 single pass: {strategy}'s cache learned position {int(again[0])} twice")
        self.cache_seq[positions] = self._cache_events + np.arange(positions.size)
        self._cache_events += positions.size

    def record_warmup(self, strategy: str, source: str, tokens: int) -> None:
        """A warm-up (compile, allocator) ran on `tokens` tokens from `source`
        ('random' is the only legal source of warm-up tokens)."""
        self.warmups.append({"strategy": strategy, "source": source, "tokens": int(tokens)})

    @staticmethod
    def check_node_timeline(merged: np.ndarray, steps: int, step_of: np.ndarray, strategy: str) -> None:
        """C3 across ranks for the node's one cache, once every rank is done: it learned
        `steps` positions (its whole learning order; `step_of` (N,) gives each position's
        step, -1 none) and each must have been scored by some rank (`merged`: element-wise
        max of the ranks' cache_seq), or a token the cache learned reached later scores
        without ever being scored itself."""
        seen = np.zeros(steps, dtype=bool)
        seen[merged[merged >= 0]] = True
        if not seen.all():
            s = int(np.argmin(seen))
            p = int(np.flatnonzero(step_of == s)[0])
            raise LedgerViolation(f"C3 score before update: {strategy}'s cache learned position {p} (step {s} of "
                                  "its learning order), which no rank scored")

    def coverage(self) -> dict:
        targets = self.score_count[1:]
        return {"targets": int(targets.size), "scored_once": int((targets == 1).sum()),
                "unscored": int((targets == 0).sum()), "rescored": int((targets > 1).sum()),
                "first_unscored": int(np.argmax(targets == 0)) + 1 if (targets == 0).any() else None}
