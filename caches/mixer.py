"""The interface the engine calls: ``parse_ngram_spec(V, "mix:orders=2-11,wmax=0.3")``.

Score-first by construction: ``score`` and ``distribution`` only read the store; the store
learns only in ``update``, which the engine calls once the scores of those positions are final
(and which refuses a position learned twice). Position t's target is tokens[t]; its contexts
are tokens[t-k..t-1], never before position 0.
"""
from __future__ import annotations

import numpy as np

from .errors import CacheSpecError
from .predictors import NormalizedTilt, WittenBellMixture, row_entropy
from .store import NgramStore

_COMMON = {
    "orders": "orders=A-B with 2 <= A <= B <= 16 (e.g. orders=2-11)",
    "cap": "cap=INT >= 16 (initial table slots; default: sized from the stream length)",
    "load": "load=FLOAT in (0.1, 0.95] (rehash above this load factor)",
}
_KINDS = {
    "mix": {"wmax": "wmax=FLOAT in [0, 1]", "h0": "h0=FLOAT (entropy centre, nats)",
            "slope": "slope=FLOAT >= 0", "c0": "c0=FLOAT > 0 (context-count half-saturation)"},
    "tilt": {"beta": "beta=FLOAT >= 0", "h0": "h0=FLOAT (entropy centre, nats)",
             "slope": "slope=FLOAT >= 0"},
}


def _fail(spec: str, msg: str) -> CacheSpecError:
    return CacheSpecError(f"--ngram {spec!r}: {msg}")


def _parse(spec: str) -> tuple[str, dict]:
    kind, _, rest = spec.strip().partition(":")
    if kind not in _KINDS:
        return _raise(spec, f"unknown kind {kind!r}; use mix:KEY=VALUE,... or tilt:KEY=VALUE,...")
    accepted = {**_COMMON, **_KINDS[kind]}
    vals: dict = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if key not in accepted:
            _raise(spec, f"unknown key {key!r} for {kind}; accepted: " + ", ".join(accepted.values()))
        form = accepted[key]
        if not eq or not val.strip():
            _raise(spec, f"key {key!r} needs a value: {form}")
        val = val.strip()
        try:
            if key == "orders":
                a, dash, b = val.partition("-")
                lo, hi = int(a), int(b if dash else a)
                if not 2 <= lo <= hi <= 16:
                    raise ValueError
                vals[key] = (lo, hi)
            elif key == "cap":
                vals[key] = int(val)
                if vals[key] < 16:
                    raise ValueError
            else:
                v = float(val)
                ok = {"wmax": 0 <= v <= 1, "slope": v >= 0, "beta": v >= 0, "c0": v > 0,
                      "load": 0.1 < v <= 0.95, "h0": np.isfinite(v)}[key]
                if not ok or not np.isfinite(v):
                    raise ValueError
                vals[key] = v
        except ValueError:
            _raise(spec, f"bad value {val!r} for key {key!r}; accepted form: {form}")
    return kind, vals


def _raise(spec: str, msg: str):
    raise _fail(spec, msg)


class NgramMixer:
    """Score-first n-gram cache mixed into the model distribution (kind 'mix' or 'tilt')."""

    def __init__(self, vocab_size: int, spec: str) -> None:
        kind, vals = _parse(spec)
        self.name: str = kind
        self.spec = spec
        lo, hi = vals.pop("orders", (2, 11))
        cap = vals.pop("cap", None)  # None: sized from the stream at bind (see store)
        load = vals.pop("load", 0.8)
        try:
            self.store = NgramStore(vocab_size, lo, hi, capacity=cap, max_load=load)
        except ValueError as e:
            raise CacheSpecError(f"--ngram {spec!r}: {e}") from None
        self.predictor = WittenBellMixture(**vals) if kind == "mix" else NormalizedTilt(**vals)

    def bind(self, tokens: np.ndarray) -> None:
        """Bind the whole evaluation stream (uint16 or int64); starts from an empty cache."""
        self.store.bind(tokens)

    def _prep(self, positions, model_logp, model_entropy):
        # cheap on the hot path: arrays of the right kind pass through without a copy
        pos = positions
        if not (type(pos) is np.ndarray and pos.dtype == np.int64 and pos.flags.c_contiguous):
            pos = np.ascontiguousarray(positions, dtype=np.int64)
        lp = model_logp if type(model_logp) is np.ndarray else np.asarray(model_logp)
        if lp.ndim != 2 or lp.shape != (pos.shape[0], self.store.vocab_size):
            raise ValueError(f"model_logp must be (n, {self.store.vocab_size}) for n = {pos.shape[0]} positions")
        if lp.dtype != np.float32 and lp.dtype != np.float64:
            lp = lp.astype(np.float64)
        if model_entropy is None:
            ent = row_entropy(lp)
        else:
            ent = np.ascontiguousarray(model_entropy, dtype=np.float64)
            if ent.shape != (pos.shape[0],):
                raise ValueError(f"model_entropy must be ({pos.shape[0]},), got {ent.shape}")
        return pos, lp, ent

    def score(self, positions: np.ndarray, model_logp: np.ndarray,
              model_entropy: np.ndarray | None = None) -> np.ndarray:
        """log p_mixed(tokens[t]) (float64, (n,)) at each position. Reads state, never writes it.

        model_entropy: optional precomputed entropy (nats) of each model row; it must equal
        -sum(exp(lp) * lp) of that row. Passing it skips the only O(V) work per position.
        """
        pos, lp, ent = self._prep(positions, model_logp, model_entropy)
        return self.predictor.fast(self.store, pos, lp, ent)

    def distribution(self, positions: np.ndarray, model_logp: np.ndarray) -> np.ndarray:
        """Slow reference path: full (n, V) float64 log-distribution at each position."""
        pos, lp, ent = self._prep(positions, model_logp, None)
        return self.predictor.full(self.store, pos, lp, ent)

    def update(self, positions: np.ndarray) -> None:
        """Learn the n-grams ending at these positions (only after their scores are final)."""
        self.store.update(positions)

    def memory_bytes(self) -> int:
        return self.store.memory_bytes()


def parse_ngram_spec(vocab_size: int, spec: str) -> NgramMixer:
    """Build the mixer for an ``--ngram`` spec ("mix:..." or "tilt:...")."""
    return NgramMixer(vocab_size, spec)
