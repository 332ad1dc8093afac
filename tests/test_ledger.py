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


def test_duplicate_within_one_call_raises():
    with pytest.raises(LedgerViolation, match="position 3"):
        Ledger(6).record_scores(np.array([3, 3]), np.zeros(2), "dup")


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


def test_cache_replays_are_checked():
    # rank 0 of 2: scores 1..3, its cache replays 4..6 (scored by rank 1), in plan order
    led = Ledger(8)
    led.record_scores(np.arange(1, 4), np.zeros(3), "s+mix")
    led.check_learn(np.arange(1, 4), "s+mix", cache=True)
    led.record_replay(np.arange(4, 7), "s+mix")
    assert led.cache_seq[1:7].tolist() == [0, 1, 2, 3, 4, 5] and led.replayed[4:7].all()
    with pytest.raises(LedgerViolation, match="cache learned position 5 twice"):
        led.record_replay(np.array([5]), "s+mix")
    with pytest.raises(LedgerViolation, match="replayed position 2 .* but this rank scored it"):
        led.record_replay(np.array([2]), "s+mix")
    # a replayed position is never scored here afterwards: learning it came first
    with pytest.raises(LedgerViolation, match="C3.*scored position 4 after its cache had learned it"):
        led.record_scores(np.array([4]), np.zeros(1), "s+mix")
    counts = np.array([0, 1, 1, 1, 1, 1, 0, 0])  # summed over ranks: nobody scored 6
    with pytest.raises(LedgerViolation, match="C3.*learned position 6, which no rank scored"):
        led.check_replays(counts, led.cache_seq, led.cache_seq, "s+mix")
    counts[6] = 1
    led.check_replays(counts, led.cache_seq, led.cache_seq, "s+mix")
    other = led.cache_seq.copy()
    other[[3, 4]] = other[[4, 3]]  # another rank learned 3 and 4 the other way round
    with pytest.raises(LedgerViolation, match="C3.*learned position 3 at different points"):
        led.check_replays(counts, np.minimum(led.cache_seq, other), np.maximum(led.cache_seq, other), "s+mix")


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
