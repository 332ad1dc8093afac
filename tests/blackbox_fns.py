"""Score functions for the black-box audit's tests (`--score-fn tests/blackbox_fns.py:NAME`).

`unigram` is legal: add-one counts of the tokens already seen in the current document, a
normalized distribution over the 1,024 tokens of sp1024, reset at every BOS, and it takes
(B, n) batches. Every other function breaks one rule the way public entries did.
"""
from __future__ import annotations

import numpy as np

V, BOS = 1024, 1


def _unigram(tokens: np.ndarray, reset: bool = True) -> np.ndarray:
    x = np.atleast_2d(np.asarray(tokens, dtype=np.int64))
    B, n = x.shape
    counts = np.zeros((B, V))
    seen = np.zeros(B)
    out = np.zeros((B, n - 1))
    rows = np.arange(B)
    for t in range(1, n):
        prev = x[:, t - 1]
        if reset:
            restart = prev == BOS
            counts[restart], seen[restart] = 0, 0
        counts[rows, prev] += 1  # learn x_{t-1}: it was scored before (or is the BOS)
        seen += 1
        out[:, t - 1] = -np.log((counts[rows, x[:, t]] + 1) / (seen + V))
    return out if np.asarray(tokens).ndim == 2 else out[0]


def unigram(tokens):
    return _unigram(tokens)


def leaky(tokens):
    """Counts carried across BOS: fine unless document isolation is claimed (C10)."""
    return _unigram(tokens, reset=False)


def peek(tokens):
    """Every score but the last reads the next token, as SLOT's optimisation over the whole
    window did (C1)."""
    x = np.asarray(tokens, dtype=np.int64)
    out = _unigram(x)
    out[:-1] -= 1e-3 * x[2:] / V
    return out


def gate(tokens):
    """Mixes in a point mass on the previous token only when the target equals it (C5)."""
    x = np.asarray(tokens, dtype=np.int64)
    p = np.exp(-_unigram(x))
    hit = x[..., 1:] == x[..., :-1]
    return -np.log(np.where(hit, 0.5 * p + 0.5, p))


def noisy(tokens):
    """Different numbers on every call."""
    return _unigram(tokens) + np.random.default_rng().random(len(tokens) - 1) * 1e-3


def twice(tokens):
    """Events: the last target scored twice, the better score kept (C4, min over passes)."""
    nll = _unigram(tokens)
    n = len(tokens)
    pos = np.concatenate([np.arange(1, n), [n - 1]])
    return pos, np.concatenate([nll, [nll[-1] * 0.5]])


def short(tokens):
    return _unigram(tokens)[:-1]
