"""Gold window plans, written out by hand, and the each-target-once property."""
import numpy as np
import pytest

from evalkit.engine.windows import (Window, document_ranges, plan_doc_isolated, plan_flat, plan_range, plan_sliding,
                             scored_counts)


def test_flat_gold_with_short_tail():
    # 11 tokens -> targets 1..10; seq 4: [1,5) [5,9) [9,11)
    assert plan_flat(11, 4) == [Window(1, 5, 1), Window(5, 9, 5), Window(9, 11, 9)]


def test_flat_drop_tail_mirrors_baseline():
    # the baseline keeps ((N-1)//L)*L + 1 tokens: targets 1..8 of 11
    assert plan_flat(11, 4, drop_tail=True) == [Window(1, 5, 1), Window(5, 9, 5)]


def test_sliding_gold():
    # 13 tokens -> targets 1..12; seq 6, stride 2
    assert plan_sliding(13, 6, 2) == [
        Window(1, 7, 1),  # first window scores everything it sees
        Window(3, 9, 7),  # later windows: full context, last `stride` targets
        Window(5, 11, 9),
        Window(7, 13, 11),
    ]


def test_sliding_gold_partial_final_window():
    # 12 tokens -> targets 1..11; the last window scores only the one target left
    assert plan_sliding(12, 6, 2) == [Window(1, 7, 1), Window(3, 9, 7), Window(5, 11, 9), Window(6, 12, 11)]


def test_sliding_shorter_than_one_window():
    assert plan_sliding(4, 8, 2) == [Window(1, 4, 1)]


def test_stride_equal_seq_len_is_flat():
    assert plan_range(1, 11, 4, 4) == plan_flat(11, 4)


@pytest.mark.parametrize("n", [2, 3, 17, 64, 65, 100, 1001])
@pytest.mark.parametrize("seq_len,stride", [(1, 1), (4, 1), (8, 3), (16, 16), (32, 8), (7, 5)])
def test_every_target_scored_exactly_once(n, seq_len, stride):
    for plan in (plan_sliding(n, seq_len, stride), plan_flat(n, seq_len)):
        counts = scored_counts(plan, n)
        assert counts[0] == 0 and (counts[1:] == 1).all()
        for w in plan:
            assert w.start <= w.score_from < w.end and w.length <= seq_len and w.start >= 1


def test_document_ranges_gold():
    # BOS at 0, 4, 9 in a 12-token stream; each doc owns up to and including the next BOS
    assert document_ranges(np.array([0, 4, 9]), 12) == [(1, 5), (5, 10), (10, 12)]


def test_doc_isolated_never_crosses_bos():
    tokens = np.array([1, 5, 6, 7, 1, 8, 9, 1, 3, 4, 5, 6, 7, 8])
    starts = np.flatnonzero(tokens == 1)
    plan = plan_doc_isolated(starts, tokens.size, 3, 1)
    counts = scored_counts(plan, tokens.size)
    assert (counts[1:] == 1).all()
    for w in plan:
        inputs = tokens[w.start - 1:w.end - 1]
        assert (inputs[1:] != 1).all(), f"window {w} reads across a BOS"
    assert plan[:3] == [Window(1, 4, 1), Window(2, 5, 4), Window(5, 8, 5)]


def test_bad_plan_arguments():
    with pytest.raises(ValueError):
        plan_sliding(10, 4, 5)
    with pytest.raises(ValueError):
        plan_sliding(10, 0, 1)
