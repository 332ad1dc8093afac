"""The ledger raises at once on the two score-first violations and counts coverage."""
import numpy as np
import pytest

from evalkit.engine.ledger import Ledger, LedgerViolation


def test_records_scores_in_order_and_coverage():
    led = Ledger(6)
    led.record_scores(np.array([1, 2]), np.array([0.5, 1.0]), "s")
    led.record_scores(np.array([4, 3]), np.array([0.1, 0.2]), "s")
    assert led.score_event[1:5].tolist() == [0, 0, 1, 1]  # one call, one event
    cov = led.coverage()
    assert cov == {"targets": 5, "scored_once": 4, "unscored": 1, "rescored": 0, "first_unscored": 5}


def test_rescoring_raises_with_position_and_strategy():
    led = Ledger(6)
    led.record_scores(np.array([1, 2]), np.zeros(2), "twopass")
    with pytest.raises(LedgerViolation, match="C4.*twopass.*position 2"):
        led.record_scores(np.array([2, 3]), np.zeros(2), "twopass")


@pytest.mark.parametrize("positions", [[3, 3], [1, 3, 3, 4], [3, 1, 3], [4, 3, 1, 3]])
def test_duplicate_within_one_call_raises(positions):
    # increasing calls take a no-sort path; a repeat must be caught in and out of order
    with pytest.raises(LedgerViolation, match="position 3"):
        Ledger(6).record_scores(np.array(positions), np.zeros(len(positions)), "dup")


def test_position_zero_is_not_a_target():
    with pytest.raises(LedgerViolation, match="position 0"):
        Ledger(6).record_scores(np.array([0]), np.zeros(1), "s")


def test_learning_before_scoring_raises():
    led = Ledger(10)
    led.record_scores(np.arange(1, 5), np.zeros(4), "ttt")
    led.check_learn(np.arange(1, 5), "ttt")
    with pytest.raises(LedgerViolation, match="C3.*ttt read position 5"):
        led.check_learn(np.arange(3, 7), "ttt")
    assert led.learn_count[1:5].tolist() == [1, 1, 1, 1]


def test_learning_calls_are_events_between_score_calls():
    led = Ledger(10)
    led.record_scores(np.array([1, 2]), np.zeros(2), "s")
    led.check_learn(np.array([1, 2]), "s")
    led.record_scores(np.array([3]), np.zeros(1), "s")
    assert led.learn_events == [1] and led.score_event[3] == 2
    assert not hasattr(led, "probe_positions")  # nothing in the ledger says the run is audited


def test_node_timeline_is_checked():
    # the node's one cache learns 1..7 in the order 1, 2, 3, 4, 5, 6, 7 (steps 0..6);
    # rank 0 of 2 scores 1..3 and 6, rank 1 scores 4, 5 (and 7, which is left unscored here)
    step_of = np.array([-1, 0, 1, 2, 3, 4, 5, 6])
    r0, r1 = Ledger(8), Ledger(8)
    r0.record_scores(np.arange(1, 4), np.zeros(3), "s+mix")
    r0.record_node_steps(np.arange(1, 4), step_of[1:4], "s+mix")
    r1.record_scores(np.array([4, 5]), np.zeros(2), "s+mix")
    r1.record_node_steps(np.array([4, 5]), step_of[4:6], "s+mix")
    r0.record_scores(np.array([6]), np.zeros(1), "s+mix")
    r0.record_node_steps(np.array([6]), step_of[6:7], "s+mix")
    assert r0.cache_seq[1:7].tolist() == [0, 1, 2, -1, -1, 5]
    # a rank reaching back before a step it already scored from: C3 (its earlier score saw this token)
    late = Ledger(8)
    late.record_scores(np.array([3]), np.zeros(1), "s+mix")
    late.record_node_steps(np.array([3]), step_of[3:4], "s+mix")
    with pytest.raises(LedgerViolation, match="C3.*scored position 2 after its cache had learned it"):
        late.record_node_steps(np.array([2]), step_of[2:3], "s+mix")
    merged = np.maximum(r0.cache_seq, r1.cache_seq)
    with pytest.raises(LedgerViolation, match="C3.*learned position 7 .*step 6.*which no rank scored"):
        Ledger.check_node_timeline(merged, 7, step_of, "s+mix")
    Ledger.check_node_timeline(merged, 6, step_of, "s+mix")  # a timeline of steps 0..5 was all scored


def test_learning_is_allowed_once_fixed_and_every_fix_must_settle():
    # the overlap: scores fixed now (the rows are the engine's copy), numbers written later
    led = Ledger(8)
    led.fix(np.array([1, 2, 3]), "ttt")
    led.check_learn(np.array([1, 2, 3]), "ttt")  # fixed is enough to learn from
    with pytest.raises(LedgerViolation, match="C3.*ttt read position 4"):
        led.check_learn(np.array([4]), "ttt")
    with pytest.raises(LedgerViolation, match="C4.*position 2"):
        led.fix(np.array([2]), "ttt")  # fixed counts as scored
    with pytest.raises(LedgerViolation, match="position 1 was fixed but its score never computed"):
        led.check_settled("ttt")
    led.settle(np.array([1, 2, 3]), np.array([0.5, 1.0, 2.0]), "ttt")
    led.check_settled("ttt")
    assert led.nll[1:4].tolist() == [0.5, 1.0, 2.0] and led.score_event[1] == 0 and led.learn_events == [1]
    for pos in ([3], [5]):  # settled twice, never fixed
        with pytest.raises(LedgerViolation, match=f"settled position {pos[0]}"):
            led.settle(np.array(pos), np.zeros(1), "ttt")
