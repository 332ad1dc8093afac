"""The interface the engine calls: ``parse_ngram_spec(V, "mix:orders=2-11,wmax=0.3")``.

Mixer protocol v2 (MIXER_PROTOCOL.md): the cache learns per token, in the order positions
are given. ``advance(positions)`` computes, for each position in turn, what scoring it needs
from the current counts and then learns it; ``combine`` turns that aux plus the model's
log-prob at the target (and at the hint), and the model's entropy, into the mixed log-prob.
So a position is always scored from the tokens before it in the learning order and never
from itself or later ones, and the result does not depend on how positions are batched.
Position t's target is tokens[t]; its contexts are tokens[t-k..t-1], never before 0.

Presets (``preset=NAME``; explicit keys override):
  tilt:preset=records  the token-only tilt of the leading legal records (openai/parameter-golf
      PR #1514, merged; the #2018 lineage #2041, #2130, #2140): one order 16 (15 context
      tokens), hint = the most frequent continuation of the exact context when its count is
      >= 0.8 of the context's (a context seen once qualifies; ties kept by the first token to
      reach a count), constant beta 2.625, learning after every token. Here with exact 64-bit
      keys (the records' C state merges distinct contexts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CacheSpecError
from .predictors import NormalizedTilt, WittenBellMixture
from .store import MAX_VOCAB, NgramStore

_COMMON = {
    "orders": "orders=A-B with 2 <= A <= B <= 16 (e.g. orders=2-11)",
    "cap": "cap=INT >= 16 (initial table slots; default: sized from the stream length)",
    "load": "load=FLOAT in (0.1, 0.95] (rehash above this load factor)",
}
_KINDS = {
    "mix": {"wmax": "wmax=FLOAT in [0, 1]", "h0": "h0=FLOAT (entropy centre, nats)",
            "slope": "slope=FLOAT >= 0", "c0": "c0=FLOAT > 0 (context-count half-saturation)"},
    "tilt": {"beta": "beta=FLOAT >= 0", "h0": "h0=FLOAT (entropy centre, nats)",
             "slope": "slope=FLOAT >= 0",
             "gate": "gate=FLOAT in [0, 1] (hint only when best count >= gate x context count; default 0.8)",
             "scale": "scale=const|entropy (strength beta, the default, or beta*sigmoid(slope(H-h0))*bc/(C+1))",
             "preset": "preset=records"},
}
PRESETS = {("tilt", "records"): {"orders": (16, 16), "gate": 0.8, "scale": "const", "beta": 2.625}}


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
            elif key == "preset":
                if (kind, val) not in PRESETS:
                    raise ValueError
                vals[key] = val
            elif key == "scale":
                if val not in ("entropy", "const"):
                    raise ValueError
                vals[key] = val
            elif key == "cap":
                vals[key] = int(val)
                if vals[key] < 16:
                    raise ValueError
            else:
                v = float(val)
                ok = {"wmax": 0 <= v <= 1, "slope": v >= 0, "beta": v >= 0, "c0": v > 0,
                      "load": 0.1 < v <= 0.95, "h0": np.isfinite(v), "gate": 0 <= v <= 1}[key]
                if not ok or not np.isfinite(v):
                    raise ValueError
                vals[key] = v
        except ValueError:
            _raise(spec, f"bad value {val!r} for key {key!r}; accepted form: {form}")
    if "preset" in vals:
        vals = {**PRESETS[(kind, vals["preset"])], **vals}
    return kind, vals


def _raise(spec: str, msg: str):
    raise _fail(spec, msg)


@dataclass
class Aux:
    """What ``advance`` computed per position (see ``kernels.advance_kernel``)."""

    targets: np.ndarray  # int64 (n,) tokens[positions]
    out_i: np.ndarray  # int64 (n,) hint / best continuation, -1 none
    out_f: np.ndarray  # float64 (n, 2)


class NgramCombiner:
    """The pure half of a mixer: the spec, ``hint_tokens`` and ``combine``, no table. A
    process that only reads another's aux (evalkit's node table) holds this, not a store."""

    def __init__(self, vocab_size: int, spec: str) -> None:
        kind, vals = _parse(spec)
        preset = vals.pop("preset", None)
        self.name: str = kind + (f"[{preset}]" if preset else "")
        self.spec, self.vocab_size = spec, int(vocab_size)
        if not 2 <= self.vocab_size <= MAX_VOCAB:
            raise CacheSpecError(f"--ngram {spec!r}: vocab_size {vocab_size}: the n-gram store supports 2..{MAX_VOCAB}")
        self.orders = vals.pop("orders", (2, 11))
        self._table_opts = {"capacity": vals.pop("cap", None), "max_load": vals.pop("load", 0.8)}
        if kind == "mix":
            self.predictor = WittenBellMixture(**vals)
        else:
            vals["const"] = vals.pop("scale", "const") == "const"
            self.predictor = NormalizedTilt(**vals)

    @property
    def needs_entropy(self) -> bool:
        """False when combine ignores the entropy (constant-strength tilt): the engine then
        skips computing it (O(V) per token)."""
        return not (isinstance(self.predictor, NormalizedTilt) and self.predictor.const)

    def _gate(self) -> tuple[float, bool]:
        p = self.predictor
        return (p.gate, p.const) if isinstance(p, NormalizedTilt) else (0.0, False)

    @property
    def aux_key(self) -> tuple:
        """What ``advance``'s output depends on besides the stream: combiners with equal keys
        can share one pass (an ablation over beta, wmax, h0, ...)."""
        return (self.vocab_size, *self.orders, self.predictor.kind, *self._gate())

    def hint_tokens(self, aux: Aux) -> np.ndarray | None:
        """The tilt's hint per position (-1: none); None for the mixture (it needs no hint)."""
        return aux.out_i if isinstance(self.predictor, NormalizedTilt) else None

    def combine(self, aux: Aux, target_logp: np.ndarray, hint_logp: np.ndarray | None,
                entropy: np.ndarray) -> np.ndarray:
        """log p_mixed(x_t) (float64 (n,)): a pure function of its inputs."""
        tl = np.asarray(target_logp, np.float64)
        ent = np.asarray(entropy, np.float64)
        if isinstance(self.predictor, NormalizedTilt):
            hl = np.where(aux.out_i >= 0, np.asarray(hint_logp, np.float64), 0.0)
            return self.predictor.combine(aux.out_i, aux.out_f, tl, hl, ent, aux.targets)
        return self.predictor.combine(aux.out_i, aux.out_f, tl, None, ent)


class NgramMixer(NgramCombiner):
    """Score-first n-gram cache mixed into the model distribution (kind 'mix' or 'tilt')."""

    def __init__(self, vocab_size: int, spec: str) -> None:
        super().__init__(vocab_size, spec)
        try:
            self.store = NgramStore(vocab_size, *self.orders, **self._table_opts)
        except ValueError as e:
            raise CacheSpecError(f"--ngram {spec!r}: {e}") from None
        self._counts = np.zeros(3, np.int64)  # positions advanced, acted, hint right

    def bind(self, tokens: np.ndarray, context_start: np.ndarray | None = None) -> None:
        """Bind the whole evaluation stream (uint16 or int64); starts from an empty cache.
        context_start: see ``NgramStore.bind`` (None: contexts run across documents)."""
        self.store.bind(tokens, context_start)
        self._counts[:] = 0

    def advance(self, positions: np.ndarray) -> Aux:
        """Per position in order: what scoring it needs from the current state, then learn it."""
        out_i, out_f = self.store.run(positions, self.predictor.kind, *self._gate())
        targets = self.store.tokens[positions].astype(np.int64)
        self._counts += (out_i.shape[0], int((out_i >= 0).sum()), int((out_i == targets).sum()))
        return Aux(targets, out_i, out_f)

    def learn(self, positions: np.ndarray) -> None:
        """Learn only (positions scored elsewhere), in the given order; each position once."""
        self.store.update(positions)

    def distribution(self, position: int, model_logp_row: np.ndarray, entropy: float) -> np.ndarray:
        """Slow path: the full (V,) float64 mixed log-distribution at ``position`` from the
        current state (call it when exactly the positions before it have been advanced)."""
        row = np.asarray(model_logp_row, np.float64)
        if row.shape != (self.store.vocab_size,):
            raise ValueError(f"model_logp_row must be ({self.store.vocab_size},), got {row.shape}")
        return self.predictor.full(self.store, int(position), row, float(entropy))

    def own_distribution(self, position: int) -> np.ndarray | None:
        """The cache's own (V,) float64 log-distribution at ``position`` from the current state,
        apart from the model's (the audit sums it separately from the combined one): mix's
        Witten-Bell p_ngram. None for a tilt, which has none: it reweights the model's."""
        if not hasattr(self.predictor, "ngram_distribution"):
            return None
        p, _, _ = self.predictor.ngram_distribution(self.store, int(position))
        with np.errstate(divide="ignore"):
            return np.log(p)

    def stats(self) -> dict:
        """Positions advanced, how many the cache acted on (a seen context for the mixture, a
        hint for the tilt) and how often its hint (best continuation) was the target."""
        n, acted, right = (int(v) for v in self._counts)
        return {"positions": n, "acted": acted, "hint_right": right,
                "acted_frac": acted / n if n else 0.0, "hint_precision": right / acted if acted else 0.0}

    def memory_bytes(self) -> int:
        return self.store.memory_bytes()


def parse_ngram_spec(vocab_size: int, spec: str) -> NgramMixer:
    """Build the mixer for an ``--ngram`` spec ("mix:...", "tilt:..." or "tilt:preset=records")."""
    return NgramMixer(vocab_size, spec)


def parse_ngram_combiner(vocab_size: int, spec: str) -> NgramCombiner:
    """The table-less half of ``parse_ngram_spec`` (same checks, same errors): for a process
    that combines aux another process computed."""
    return NgramCombiner(vocab_size, spec)
