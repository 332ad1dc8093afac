"""Audit probes, captured by the engine where a strategy cannot see them.

The audit asks for the full distribution at some positions. It must not ask through
anything a strategy can read (an attribute of the ledger or the context would let a
strategy behave honestly only when audited), so the request lives in a context variable
that `EvalContext.score` consults; the strategy's view is identical with or without it.

Precision: a probe row is the strategy's log-probs renormalized in float64
(`probe_rows`), so the sum of a plain model's row is 1 to ~1e-15 whatever the vocabulary,
and a mixer's full distribution (computed from that same float64 row) measures the
mixer, not float32 rounding. The fast path (float32 log-softmax, gathered at the target)
is then compared with the float64 row within a tolerance sized to float32 and the
vocabulary (evalkit.audit.normalization).
"""
from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch


class AuditStop(BaseException):
    """Raised by the engine in an audit re-run once every position the audit compares has
    been scored (the rest of the run cannot change the verdict). A BaseException so that a
    strategy's `except Exception` cannot swallow it."""


@dataclass
class Probe:
    """A full distribution captured at the moment a position was scored."""

    logp: np.ndarray  # float64 (V,) log-probabilities over the whole alphabet (mixed, if a mixer)
    fast_logp: float  # what the fast path fixed for the target
    fast_dtype: str = "float32"  # dtype of the row the fast path gathered from (sizes the tolerance)
    own_logp: np.ndarray | None = None  # float64 (V,) the mixer's own distribution, if it exposes one


@dataclass
class Capture:
    """What one audited run asked for and what the engine saw."""

    positions: frozenset[int] = frozenset()
    stop_after: np.ndarray | None = None  # bool (N,): abort once all of these are scored
    probes: dict[int, Probe] = field(default_factory=dict)
    own: dict[int, np.ndarray] = field(default_factory=dict)  # the mixer's own distribution at probes
    mixer_seconds: float = 0.0  # wall time inside mixer scoring and learning
    mixers: list = field(default_factory=list)  # every mixer object that scored (for stats())
    ledger: object = None  # the run's ledger, kept when the run stops early
    _wanted: np.ndarray | None = None
    _remaining: int = 0

    def wanted(self, positions: np.ndarray) -> np.ndarray:
        if not self.positions:
            return np.zeros(len(positions), dtype=bool)
        if self._wanted is None:
            self._wanted = np.fromiter(self.positions, dtype=np.int64)
        return np.isin(positions, self._wanted)

    def saw_mixer(self, mixer, seconds: float) -> None:
        self.mixer_seconds += seconds
        if mixer is not None and not any(m is mixer for m in self.mixers):
            self.mixers.append(mixer)

    def after_scores(self, positions: np.ndarray, ledger) -> None:
        """Raise AuditStop once every `stop_after` position has been scored."""
        self.ledger = ledger
        if self.stop_after is None:
            return
        if self._remaining == 0:
            self._remaining = int(self.stop_after.sum())
        hit = self.stop_after[positions]
        self._remaining -= int(hit.sum())
        self.stop_after[positions[hit]] = False
        if self._remaining <= 0:
            raise AuditStop


_ACTIVE: ContextVar[Capture | None] = ContextVar("evalkit_audit_capture", default=None)


def active() -> Capture | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def capture(positions: frozenset[int] = frozenset(), stop_after: np.ndarray | None = None) -> Iterator[Capture]:
    """Capture probes at `positions` (and stop early, see AuditStop) for one run."""
    cap = Capture(frozenset(int(p) for p in positions),
                  None if stop_after is None or not stop_after.any() else stop_after.copy())
    token = _ACTIVE.set(cap)
    try:
        yield cap
    finally:
        _ACTIVE.reset(token)


def probe_rows(logp: torch.Tensor) -> np.ndarray:
    """(n, V) float64 log-distribution: the rows renormalized in float64, so what a float32
    log-softmax lost to rounding is not charged to the strategy. A row that was not a
    distribution (say, scaled logits) is renormalized too, and then its fast-path value
    disagrees with this row by log(sum): the fast-path comparison catches it."""
    return torch.log_softmax(logp.detach().to(torch.float64), dim=-1).cpu().numpy()


class Timer:
    """Accumulates wall seconds of a block into the active capture's mixer time."""

    def __init__(self, mixer) -> None:
        self.mixer = mixer

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        cap = _ACTIVE.get()
        if cap is not None:
            cap.saw_mixer(self.mixer, time.perf_counter() - self.t0)
