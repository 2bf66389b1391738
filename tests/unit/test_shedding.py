"""``BacklogGate``: Little's-law load shedding, driven with explicit times."""

from __future__ import annotations

import pytest

from relaybus.streams.shedding import MAX_RETRY_AFTER, Admit, BacklogGate, Shed


def fed(gate: BacklogGate, readings: list[tuple[float, int, int]]) -> BacklogGate:
    for now, in_flight, arrived in readings:
        gate.observe(now, in_flight, arrived)
    return gate


def test_the_limit_is_the_work_finished_in_the_target_time() -> None:
    # 100 in flight, 50 arrive and the backlog is 100 again a second later: 50/s.
    gate = fed(BacklogGate(target_seconds=4, floor=10), [(0.0, 100, 0), (1.0, 100, 50)])
    assert gate.rate == pytest.approx(50)
    assert gate.limit == 200


def test_before_any_rate_is_measured_the_floor_is_the_limit() -> None:
    gate = fed(BacklogGate(target_seconds=4, floor=3), [(0.0, 0, 0)])
    assert [isinstance(gate.decide(0.1), Admit) for _ in range(4)] == [True, True, True, False]


def test_a_request_over_the_limit_is_shed_with_when_to_come_back() -> None:
    gate = fed(BacklogGate(target_seconds=2, floor=1), [(0.0, 100, 0), (1.0, 100, 10)])
    decided = gate.decide(1.1)  # limit 20, backlog 100: 81 orders over, at 10/s
    assert isinstance(decided, Shed)
    assert decided.retry_after == 9
    assert "100 orders in flight" in decided.reason
    assert "limit is 20" in decided.reason


def test_what_the_gate_admits_between_readings_counts_at_once() -> None:
    gate = fed(BacklogGate(target_seconds=1, floor=5), [(0.0, 3, 0)])
    assert [isinstance(gate.decide(0.0), Admit) for _ in range(3)] == [True, True, False]
    gate.observe(1.0, 0, 2)  # the next reading replaces the local count
    assert isinstance(gate.decide(1.0), Admit)


def test_admissions_made_while_a_reading_ran_stay_counted() -> None:
    gate = fed(BacklogGate(target_seconds=1, floor=10), [(0.0, 0, 0)])
    gate.decide(0.0)
    counted = gate.admitted  # the reading begins: it will see this one order
    gate.decide(0.1)
    gate.decide(0.1)
    gate.observe(0.2, 1, 1, counted)
    assert gate.admitted == 2
    assert gate.in_flight == 1


def test_vips_are_shed_last() -> None:
    gate = BacklogGate(target_seconds=1, floor=10, vip_headroom=2.0)
    gate.observe(0.0, 15, 0)
    assert isinstance(gate.decide(0.0), Shed)
    assert isinstance(gate.decide(0.0, vip=True), Admit)
    gate.observe(0.0, 20, 0)
    decided = gate.decide(0.0, vip=True)
    assert isinstance(decided, Shed)
    assert "VIP limit" in decided.reason


def test_a_stalled_pipeline_is_asked_about_again_soon_and_still_takes_the_floor() -> None:
    gate = fed(BacklogGate(target_seconds=3, floor=2), [(0.0, 50, 0), (1.0, 50, 0)])
    assert gate.rate == 0
    assert gate.limit == 2
    decided = gate.decide(1.0)
    assert isinstance(decided, Shed)
    assert decided.retry_after == MAX_RETRY_AFTER
    gate.observe(2.0, 1, 0)  # it drained: the floor admits again
    assert isinstance(gate.decide(2.0), Admit)


def test_the_rate_is_smoothed_and_never_negative() -> None:
    gate = BacklogGate(target_seconds=1, floor=1, smoothing=0.5)
    fed(gate, [(0.0, 10, 0), (1.0, 10, 10), (2.0, 40, 0)])  # 10/s, then the backlog grew
    assert gate.rate == pytest.approx(5)


def test_queueing_mode_releases_at_the_finish_rate_and_sheds_a_full_queue() -> None:
    gate = fed(
        BacklogGate(target_seconds=1, floor=1, queue=2, smoothing=1.0),
        [(0.0, 10, 0), (1.0, 10, 4)],  # 4/s, limit 4, backlog 10: over
    )
    first, second, third = gate.decide(1.0), gate.decide(1.0), gate.decide(1.0)
    assert isinstance(first, Admit)
    assert first.wait == 0
    assert isinstance(second, Admit)
    assert second.wait == pytest.approx(0.25)
    assert isinstance(third, Admit)
    assert third.wait == pytest.approx(0.5)
    full = gate.decide(1.0)
    assert isinstance(full, Shed)
    assert "queue full" in full.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_seconds": 0, "floor": 1},
        {"target_seconds": 1, "floor": 0},
        {"target_seconds": 1, "floor": 1, "vip_headroom": 0.5},
        {"target_seconds": 1, "floor": 1, "queue": -1},
        {"target_seconds": 1, "floor": 1, "smoothing": 0},
    ],
)
def test_settings_that_cannot_work_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|>="):
        BacklogGate(**kwargs)  # type: ignore[arg-type]
