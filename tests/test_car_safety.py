"""The one safety gate and the vehicle loop, deterministically: a clock of the test's own, links that
record what they were told. (The loopback tests with real sockets and timing are in test_realcar.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from scratchpilot.car.links import CarLink, DryRunLink, NoCarLink
from scratchpilot.car.parts import PilotPart, RecorderPart, Tally, TimeLimit, keys_to_label
from scratchpilot.car.safety import Safety, Stop, StopReason
from scratchpilot.car.vehicle import END, Vehicle


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingLink:
    """A CarLink that remembers every call; ``up`` and ``problem`` are set by the test."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []
        self.up = True
        self.problem = None
        self.stats = {}
        self.latched = False

    @property
    def ready(self) -> bool:
        return self.up and not self.latched

    def drive(self, label):
        self.calls.append(("drive", label))
        return self.ready

    def hold_stop(self, reason=None):
        self.calls.append(("hold", reason.reason if reason else None))
        return self.up and not self.latched

    def emergency_stop(self):
        self.calls.append(("estop", None))
        self.latched = True

    def close(self):
        pass


@pytest.fixture
def gate():
    clock, link = Clock(), RecordingLink()
    return Safety(link, max_frame_age=0.2, min_confidence=0.5, clock=clock, stop_repeat_s=0.1), clock, link


def test_every_link_is_a_car_link():
    assert isinstance(RecordingLink(), CarLink) and isinstance(DryRunLink(lambda line: None), CarLink)
    assert isinstance(NoCarLink(), CarLink)


def test_each_fault_holds_the_car_and_driving_resumes_when_it_clears(gate):
    safety, clock, link = gate
    lost = Stop(StopReason.STREAM_LOST, "disconnected")
    cases = [  # (frame age in s or None for no frame, confidence, source fault) -> reason, detail
        ((0.3, 0.9, None), StopReason.STALE_FRAME, "300 ms > 200 ms"),
        ((0.05, 0.3, None), StopReason.LOW_CONFIDENCE, "0.30 < 0.50"),
        ((None, 0.9, None), StopReason.NO_FRAME, ""),
        ((0.05, 0.9, lost), StopReason.STREAM_LOST, "disconnected"),
    ]
    assert safety.run("forward", 0.9, clock.t - 0.05) == ("forward", None)
    for (age, confidence, fault), reason, detail in cases:
        link.calls.clear()
        clock.t += 1.0
        frame_time = None if age is None else clock.t - age
        sent, stop = safety.run("forward", confidence, frame_time, fault)
        assert sent == "stop" and stop.reason is reason and detail in str(stop)
        assert link.calls == [("hold", reason)]  # held still, not driven
        assert safety.run("forward", 0.9, clock.t - 0.05) == ("forward", None)  # the fault cleared: drives again
    assert [s["kind"] for s in safety.stops] == ["stale_frame", "low_confidence", "no_frame", "stream_lost"]
    assert all(s["duration_s"] == 0.0 for s in safety.stops)


def test_a_lost_link_is_a_stop_and_a_refused_command_too(gate):
    safety, clock, link = gate
    link.up, link.problem = False, "cable pulled"
    sent, stop = safety.run("left", 0.9, clock.t)
    assert sent == "stop" and stop == Stop(StopReason.LINK_LOST, "cable pulled")
    link.up = True
    clock.t += 0.2

    def refuse(label):
        link.calls.append(("drive", label))
        return False

    link.drive = refuse  # the link was ready, but this command did not get through
    sent, stop = safety.run("left", 0.9, clock.t)
    assert sent == "stop" and stop.reason is StopReason.LINK_LOST
    assert safety.stop_count == 1  # the same stop continues: one entry, one log line


def test_stop_is_resent_every_stop_repeat_s_and_one_entry_per_stop(gate):
    safety, clock, link = gate
    stale = clock.t - 1.0
    for _ in range(10):  # 10 ticks 30 ms apart: "hold" every 100 ms, i.e. at 0, 120, 240 ms
        safety.run("forward", 0.9, stale)
        clock.t += 0.03
    assert link.calls.count(("hold", StopReason.STALE_FRAME)) == 3
    assert safety.stop_count == 1 and safety.stops[0]["duration_s"] is None  # still stopped


def test_nothing_new_sends_nothing(gate):
    safety, clock, link = gate
    assert safety.run(None, None, clock.t) == (None, None)
    assert link.calls == []


def test_the_estop_latches(gate):
    safety, clock, link = gate
    safety.run("forward", 0.9, clock.t)
    sent, stop = safety.run("forward", 0.9, clock.t, estop=True)
    assert sent is None and stop == Stop(StopReason.ESTOP) and link.latched
    for _ in range(5):  # the fault that caused nothing clears, but the e-stop stays
        clock.t += 1.0
        assert safety.run("forward", 0.9, clock.t) == (None, Stop(StopReason.ESTOP))
    assert [c for c in link.calls if c[0] == "drive"] == [("drive", "forward")]
    assert safety.summary()["estopped"] and safety.stop_count == 1


def test_limits_are_checked_at_the_door():
    with pytest.raises(ValueError, match="max_frame_age"):
        Safety(NoCarLink(), max_frame_age=0)
    with pytest.raises(ValueError, match="min_confidence"):
        Safety(NoCarLink(), min_confidence=1.5)


# ---- the vehicle loop ---------------------------------------------------------------------------------


class Counter:
    def __init__(self, stop_at: int):
        self.n, self.stop_at = 0, stop_at

    def run(self):
        self.n += 1
        return self.n, ("done" if self.n >= self.stop_at else None)


class Double:
    def run(self, x):
        return 2 * x


def test_parts_pass_named_values_in_order_and_end_the_run():
    car = Vehicle()
    counter, tally = Counter(stop_at=5), Tally()
    car.add(counter, outputs=("n", END)).add(Double(), inputs=("n",), outputs=("twice",))
    car.add(tally, inputs=("twice",))
    car.add(TimeLimit(seconds=None), outputs=(END,))  # "not yet" from a later part never cancels an end
    run = car.run(max_ticks=50)  # a bound, so that a loop that never ends fails instead of hanging
    assert run.ended == "done" and run.ticks == 5 and car.memory["twice"] == 10
    assert tally.counts == {"2": 1, "4": 1, "6": 1, "8": 1, "10": 1}
    assert set(run.part_ms) == {"Counter", "Double", "Tally", "TimeLimit"} and len(run.part_ms["Double"]) == 5
    assert Vehicle().add(Counter(stop_at=100), outputs=("n", END)).run(max_ticks=3).ended == "max ticks"


def test_run_if_skips_a_part_and_clears_its_outputs():
    class Source:
        def __init__(self):
            self.values = iter([1, None, 3])

        def run(self):
            return next(self.values)

    car = Vehicle()
    double = Double()
    car.add(Source(), outputs=("x",)).add(double, inputs=("x",), outputs=("y",), run_if="x")
    car.add(tally := Tally(), inputs=("y",))
    run = car.run(max_ticks=3)
    assert tally.counts == {"2": 1, "6": 1} and len(run.part_ms["Double"]) == 2


def test_bad_parts_are_refused_clearly():
    car = Vehicle().add(Double(), inputs=("x",), outputs=("a", "b"))
    car.memory["x"] = 1
    with pytest.raises(TypeError, match="part Double should return 2 values"):
        car.tick()
    with pytest.raises(TypeError, match="needs a run"):
        Vehicle().add(object())
    with pytest.raises(ValueError, match="two parts are named 'Double'"):
        Vehicle().add(Double()).add(Double())


def test_the_simulator_and_the_real_car_run_the_same_loop_and_gate():
    """Where it shows: both builders make a Vehicle whose gate is a Safety."""
    pytest.importorskip("gymnasium")
    from scratchpilot.car.hardware.real_car import RealCar
    from scratchpilot.car.sim.env import Simulator
    from scratchpilot.car.sim.runs import pilot_vehicle

    class FixedPilot:
        def decide(self, frame):
            return "forward", 0.9, None

        def reset(self):
            pass

    class FakeClient:
        stats = {"drops": 0}
        connected = True
        last_error = None

        def wait_frame(self, timeout_s=None):
            return None

    class Controls:
        def poll(self):
            from scratchpilot.car.hardware.window import Controls as C

            return C()

        def show(self, image, lines):
            pass

    class EndEpisode:  # the lap is over after 3 frames, as far as the loop can tell
        def __init__(self, sim):
            self.sim = sim

        def run(self):
            if self.sim.metrics.steps >= 3:
                self.sim.stop()

    with Simulator(0) as sim:
        sim_car = pilot_vehicle(sim, FixedPilot(), extra=[(EndEpisode(sim), (), ())])
        run = sim_car.run()
        assert run.ticks == 4 and run.ended == "episode over" and sim.metrics.steps == 3
        gate = next(e.part for e in sim_car.entries if e.name == "safety")
        assert gate.stop_count == 0  # the end of the episode is not a stop
    real = RealCar(FakeClient(), Safety(NoCarLink()), Controls(), pilot=FixedPilot())
    assert real.vehicle.run(max_ticks=2).ticks == 2 and real.safety.stop.reason is StopReason.NO_FRAME
    for car in (sim_car, real.vehicle):
        assert type(car) is Vehicle
        assert [type(e.part) for e in car.entries if e.name == "safety"] == [Safety]


def test_pilot_part_forgets_history_on_restart_and_stops_deciding_after_the_estop():
    class HistoryPilot:
        resets = 0

        def reset(self):
            self.resets += 1

        def decide(self, frame):
            return "left", 0.7, None

    pilot = HistoryPilot()
    part = PilotPart(pilot)
    assert part.run(np.zeros(2), restart=True) == ("left", 0.7) and pilot.resets == 1
    assert part.run(np.zeros(2)) == ("left", 0.7) and pilot.resets == 1
    assert part.run(np.zeros(2), estop=True) == (None, None) and part.decisions == 2


def test_recorder_part_skips_frames_taken_while_stopped():
    class Writer:
        def __init__(self):
            self.rows = []

        def add(self, image, label, timestamp, episode=0):
            if image.shape != (2, 2):
                raise ValueError("frame shape changed")
            self.rows.append((label, timestamp, episode))

    writer = Writer()
    part = RecorderPart(writer)
    assert part.run(np.zeros((2, 2)), "left", 1.0, 0, None)
    assert not part.run(np.zeros((2, 2)), "left", 1.1, 0, Stop(StopReason.STALE_FRAME))
    assert not part.run(np.zeros((3, 2)), "left", 1.2, 0, None)
    assert not part.run(None, "left", 1.3, 0, None)
    assert writer.rows == [("left", 1.0, 0)]
    assert part.stats == {"recorded": 1, "skipped_stale_frame": 1, "skipped_shape": 1}


def test_recorder_part_stops_when_the_session_cannot_be_written(tmp_path):
    """A chunk that cannot be written is not a skipped frame: every later frame would be lost too."""
    from scratchpilot.car.sessions import SessionError, SessionWriter

    writer = SessionWriter(tmp_path, source="test")
    part = RecorderPart(writer)
    assert part.run(np.zeros((2, 2), np.uint8), "left", 1.0, 0, None)
    writer.close()
    with pytest.raises(SessionError, match="the session is closed"):
        part.run(np.zeros((2, 2), np.uint8), "left", 1.1, 0, None)
    assert part.stats == {"recorded": 1}


@pytest.mark.parametrize(("held", "label"), [
    (set(), "none"), ({"up"}, "forward"), ({"left"}, "left"), ({"up", "right"}, "right"),
    ({"left", "right"}, "none"), ({"up", "left", "right"}, "forward"), ({"down", "left"}, "brake"),
    ({"space"}, "brake"),
])
def test_keys_to_label(held, label):
    assert keys_to_label(held) == label


def test_stream_frames_turn_the_client_state_into_stops():
    """The stream part, with a client of the test's own: no frame, a frame, a drop, a bad JPEG, a gap."""
    from scratchpilot.car.hardware.stream_protocol import Frame
    from scratchpilot.car.hardware.stream_source import StreamFrames
    from scratchpilot.util.images import encode_jpeg

    pytest.importorskip("PIL")
    good = encode_jpeg(np.full((8, 8, 3), 200, np.uint8))

    class Client:
        def __init__(self):
            self.stats = {"drops": 0}
            self.connected, self.last_error, self.next = True, None, None
            self.index = 0

        def send(self, jpeg):
            self.index += 1
            self.next = Frame(self.index, 5_000_000_000 + self.index, jpeg, 0, 0.0, self.index)

        def wait_frame(self, timeout_s=None):
            frame, self.next = self.next, None
            return frame

    client = Client()
    source = StreamFrames(client, poll_s=0)
    image, frame_time, fault, restart, index, _ = source.run()
    assert image is None and frame_time is None and fault is None  # the gate says NO_FRAME
    client.send(good)
    image, frame_time, fault, restart, index, _ = source.run()
    assert image.shape == (8, 8, 3) and frame_time == pytest.approx(5.000000001) and restart and index == 1
    assert source.run()[:4] == (None, frame_time, None, False)  # nothing new: the newest frame's time
    client.connected, client.last_error = False, "connection reset"
    fault = source.run()[2]
    assert fault == Stop(StopReason.STREAM_LOST, "disconnected: connection reset")
    client.connected, client.stats["drops"] = True, 1
    assert source.run()[2].reason is StopReason.STREAM_LOST  # back, but no frame newer than the drop yet
    client.send(b"\xff\xd8 not a jpeg")
    image, _, fault, _, _, _ = source.run()
    assert image is None and fault.reason is StopReason.BAD_FRAME and source.bad_frames == 1
    client.send(good)
    image, _, fault, restart, index, _ = source.run()
    assert image is not None and fault is None and restart and index == 3  # a fresh start after the gap
