"""The timestamps the normalise stage stamps on ``llm_calls`` records (RecordClock):
input (acceptance) time, so catching up on a backlog looks like live traffic to the
aggregate and detect stages, and heartbeats that never overtake a backlog."""

from pipeline.stream.normalise_stage import RecordClock

IDLE = 2.0


def test_records_carry_their_input_time_not_the_time_they_were_normalised():
    clock = RecordClock(IDLE, mono=0.0)
    # A backlog accepted an hour ago, read now.
    assert clock.stamp(1_000.0, wall=4_600.0, mono=1.0) == 1_000.0
    assert clock.stamp(1_001.5, wall=4_600.1, mono=1.1) == 1_001.5


def test_stamps_never_go_back_and_never_pass_the_wall_clock():
    clock = RecordClock(IDLE, mono=0.0)
    assert clock.stamp(1_010.0, wall=5_000.0, mono=1.0) == 1_010.0
    # Another partition, further behind: the stamp stays at the newest time given.
    assert clock.stamp(1_000.0, wall=5_000.0, mono=1.1) == 1_010.0
    # An input time ahead of this host's clock is capped at the wall clock.
    assert clock.stamp(9_999.0, wall=5_000.0, mono=1.2) == 5_000.0
    # No usable input time (0 or missing): the newest time known.
    assert clock.stamp(None, wall=5_001.0, mono=1.3) == 5_000.0


def test_no_heartbeat_before_the_first_record_until_assignment_had_time_to_fetch():
    clock = RecordClock(IDLE, mono=0.0)
    assert clock.heartbeat(wall=5_000.0, mono=1.0) is None
    clock.assigned(mono=5.0)
    assert clock.heartbeat(wall=5_010.0, mono=5.0 + 3 * IDLE - 0.1) is None
    # Nothing came: the topic has no backlog, the wall clock closes windows.
    assert clock.heartbeat(wall=5_020.0, mono=5.0 + 3 * IDLE) == 5_020.0


def test_heartbeats_during_a_backlog_advance_event_time_by_the_wall_time_since():
    clock = RecordClock(IDLE, mono=0.0)
    clock.stamp(1_000.0, wall=5_000.0, mono=10.0)
    hb = clock.heartbeat(wall=5_001.0, mono=11.0)
    assert hb == 1_001.0          # not 5_001: the backlog's calls are not made late
    # Caught up (no input for idle_s): the wall clock.
    assert clock.heartbeat(wall=5_003.0, mono=12.0) == 5_003.0
    # And a stamp after that never goes back below it.
    assert clock.stamp(1_002.0, wall=5_004.0, mono=13.0) == 5_003.0
