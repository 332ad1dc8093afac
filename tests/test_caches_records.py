"""`tilt:preset=records` against a slow pure-Python reference of the records' rule
(caches/reference.py:records_tilt): hint and boost identical at every position of the shared
FineWeb streams (sp1024 and sp8192), learning after every token in one kernel call."""
from pathlib import Path

import numpy as np
import pytest

from caches import parse_ngram_spec
from caches.reference import records_tilt

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARDS = {1024: "fineweb_verify200_sp1024_val_000000.bin", 8192: "fineweb_verify200_sp8192_val_000000.bin"}


def whole_shard(V: int) -> np.ndarray:
    path = SHARED / "corpus" / "shards" / SHARDS[V]
    if not path.exists():
        pytest.skip(f"{path} not available")
    header = np.fromfile(path, dtype="<i4", count=256)
    return np.fromfile(path, dtype="<u2", offset=1024, count=int(header[2]))


@pytest.mark.parametrize("V", [1024, 8192])
def test_records_hint_and_beta_match_reference_on_whole_stream(V):
    toks = whole_shard(V)
    m = parse_ngram_spec(V, "tilt:preset=records")
    assert m.name == "tilt[records]"
    m.bind(toks)
    aux = m.advance(np.arange(toks.shape[0], dtype=np.int64))  # one call: score t, learn t, t+1, ...
    hint = m.hint_tokens(aux)
    beta = np.where(hint >= 0, m.predictor.strength(aux.out_f[:, 0], np.zeros(toks.shape[0])), 0.0)
    ref_hint, ref_beta = records_tilt(toks)
    ref_hint, ref_beta = np.array(ref_hint), np.array(ref_beta)
    fired, right = int((ref_hint >= 0).sum()), int((ref_hint == toks).sum())
    print(f"V={V}: {toks.shape[0]} positions, hints at {fired} ({fired / toks.shape[0]:.2%}), right "
          f"{right / max(fired, 1):.1%}; hint mismatches {int((hint != ref_hint).sum())}, "
          f"max |beta - ref| = {np.abs(beta - ref_beta).max():.3e}")
    assert fired > 1000
    assert np.array_equal(hint, ref_hint)
    assert np.array_equal(beta, ref_beta)
    s = m.stats()
    assert (s["positions"], s["acted"], s["hint_right"]) == (toks.shape[0], fired, right)


def test_records_ties_and_threshold_on_a_crafted_stream():
    """Context A seen with continuations x, y, y, x...: the first to reach a count keeps it
    (strict >), and the gate opens only at >= 0.8."""
    V, k = 50, 15
    ctx = list(range(10, 10 + k))
    conts = [3, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3]
    toks = []
    for c in conts:
        toks += ctx + [c] + [40 + len(toks) % 7]  # a separator keeps other contexts apart
    toks = np.array(toks, np.uint16)
    m = parse_ngram_spec(V, "tilt:preset=records")
    m.bind(toks)
    hint = m.hint_tokens(m.advance(np.arange(toks.shape[0], dtype=np.int64)))
    ref_hint, _ = records_tilt(toks)
    at = [i * (k + 2) + k for i in range(len(conts))]  # positions right after the context
    print("hints after the context:", hint[at].tolist(), "reference:", [ref_hint[i] for i in at])
    assert hint.tolist() == ref_hint
    # seen once -> 3 (1/1); {3:1, 4:1}: 1/2 < 0.8; 3 regains the lead and reaches 8/10 = 0.8
    # exactly at the last visit: the gate is >=
    assert hint[at].tolist() == [-1, 3, -1, -1, -1, -1, -1, -1, -1, -1, 3]
