"""The CarRacing simulator wrapper, the scripted expert and the keyboard mapping, on the real env."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("Box2D")

from scratchpilot.car.links import LABELS, CarLink  # noqa: E402
from scratchpilot.car.parts import keys_to_label  # noqa: E402
from scratchpilot.car.sim.env import (  # noqa: E402
    INDICATOR_BAR_ROWS,
    LABEL_TO_ACTION,
    Simulator,
    label_to_action,
    make_env,
)
from scratchpilot.car.sim.expert import ScriptedExpert, drive_episode, racing_line  # noqa: E402


@pytest.fixture()
def state_sim():
    with Simulator(seed=0, render_frames=False) as sim:
        yield sim


# -- labels -------------------------------------------------------------------------------------------
def test_labels_are_distinct_and_cover_every_env_action():
    assert LABELS == ("none", "forward", "left", "right", "brake")
    assert sorted(LABEL_TO_ACTION[label] for label in LABELS) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown driving label 'reverse'"):
        label_to_action("reverse")


@pytest.mark.parametrize("label", LABELS)
def test_each_label_moves_the_car_controls_as_named(label, state_sim):
    car = state_sim.car
    for _ in range(5):
        state_sim.send(label)
    steer = car.wheels[0].joint.angle  # positive = wheels turned left (counter-clockwise)
    gas = car.wheels[2].gas  # rear-wheel drive
    brake = car.wheels[0].brake
    assert (steer > 0.1) == (label == "left")
    assert (steer < -0.1) == (label == "right")
    assert (gas > 0) == (label == "forward")
    assert (brake > 0) == (label == "brake")


def test_left_turns_the_car_counter_clockwise(state_sim):
    for _ in range(60):
        state_sim.send("forward")
    heading = state_sim.car.hull.angle
    for _ in range(25):
        state_sim.send("left")
    assert state_sim.car.hull.angle > heading + 0.05


# -- frames and interfaces ----------------------------------------------------------------------------
def test_simulator_is_a_frame_source_and_a_car_link():
    with Simulator(seed=1) as sim:
        assert isinstance(sim, CarLink) and sim.ready
        frame, t0 = sim.read()
        assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
        sim.send("forward")
        frame, t1 = sim.read()
        assert t0 == 0.0 and t1 == pytest.approx(1 / 50)
        for _ in range(59):  # past the zoom-in of the first second
            sim.send("forward")
        frame, t60 = sim.read()
        assert t60 == pytest.approx(60 / 50)
        # the indicator bar is black apart from the score and gauges; the view above it has no black
        black = frame.max(axis=2) == 0
        assert black[-INDICATOR_BAR_ROWS:].mean() > 0.8
        assert black[: -INDICATOR_BAR_ROWS].mean() < 0.01


def test_state_only_simulator_has_no_frames(state_sim):
    with pytest.raises(RuntimeError, match="render_frames=False"):
        state_sim.read()


def test_stop_ends_the_episode_and_is_idempotent(state_sim):
    state_sim.send("forward")
    state_sim.stop()
    state_sim.stop()
    assert state_sim.done and state_sim.metrics.steps == 1
    with pytest.raises(RuntimeError, match="episode on track 0 is over"):
        state_sim.send("forward")
    state_sim.reset()
    assert not state_sim.done and state_sim.metrics.steps == 0


def test_fast_render_draws_exactly_what_gymnasium_draws():
    fast, stock = make_env(4, fast_render=True), make_env(4, fast_render=False)
    # 70 frames: the zoomed-out first second (most polygons on screen) and then normal driving
    actions = np.random.default_rng(0).choice([0, 1, 2, 3, 3, 3, 4], size=70)
    try:
        for action in actions:
            frame_fast = fast.step(int(action))[0]
            frame_stock = stock.step(int(action))[0]
            np.testing.assert_array_equal(frame_fast, frame_stock)
    finally:
        fast.close()
        stock.close()


# -- metrics ------------------------------------------------------------------------------------------
def test_metrics_match_a_manual_count_on_the_raw_env(state_sim):
    # gas, then a long hard left: the car leaves the road, so every counter gets exercised
    labels = ["forward"] * 120 + ["left"] * 80 + ["forward"] * 60
    env = make_env(0, render_frames=False)
    total, off_track = 0.0, 0
    for label in labels:
        _, reward, terminated, truncated, _ = env.step(LABEL_TO_ACTION[label])
        total += reward
        off_track += not any(wheel.tiles for wheel in env.unwrapped.car.wheels)
        state_sim.send(label)
    m = state_sim.metrics
    assert m.steps == len(labels)
    assert m.score == pytest.approx(total)
    assert m.tiles_visited == env.unwrapped.tile_visited_count > 10
    assert m.tiles_total == len(env.unwrapped.track)
    assert m.off_track_steps == off_track > 0
    assert m.tiles_visited_pct == pytest.approx(100 * m.tiles_visited / m.tiles_total)
    # score = 1000/N per tile - 0.1 per frame while the car stays in the playfield
    assert m.score == pytest.approx(1000 * m.tiles_visited / m.tiles_total - 0.1 * m.steps)
    assert not (m.lap_completed or m.truncated or m.out_of_playfield)
    env.close()


# -- expert -------------------------------------------------------------------------------------------
def test_expert_makes_steady_progress_on_the_road(state_sim):
    expert = ScriptedExpert()
    expert.reset(state_sim.track)
    visited = []
    for step in range(300):
        state_sim.send(expert.act(state_sim.car))
        if step % 100 == 99:
            visited.append(state_sim.metrics.tiles_visited)
    assert visited[0] > 15 and visited[1] > visited[0] + 20 and visited[2] > visited[1] + 20
    assert state_sim.metrics.off_track_steps == 0
    assert state_sim.metrics.score > 150


def test_expert_completes_a_lap_and_the_score_adds_up():
    with Simulator(seed=3, render_frames=False) as sim:
        labels = []
        m = drive_episode(sim, on_step=lambda frame, label: labels.append(label))
    assert m.lap_completed and not m.truncated
    assert len(labels) == m.steps < 1000
    assert set(labels) <= set(LABELS) and {"forward", "left", "right"} <= set(labels)
    assert m.tiles_visited >= 0.95 * m.tiles_total
    assert m.score == pytest.approx(1000 * m.tiles_visited / m.tiles_total - 0.1 * m.steps)
    assert m.score > 880


def test_racing_line_stays_on_the_road_and_is_shorter(state_sim):
    track = state_sim.track
    line = racing_line(track, margin=2.5, iterations=600, stiffness=30.0)
    across = np.stack([np.cos(track[:, 1]), np.sin(track[:, 1])], axis=1)
    offset = ((line - track[:, 2:4]) * across).sum(axis=1)
    assert np.abs(offset).max() <= 40 / 6 - 2.5 + 1e-9 and offset[0] == 0.0

    def length(points):
        return np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1).sum()

    assert length(line) < 0.97 * length(track[:, 2:4])
    with pytest.raises(ValueError, match="shape"):
        ScriptedExpert().reset(track[:, 2:])


# -- keyboard -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("held", "label"),
    [
        (set(), "none"),
        ({"up"}, "forward"),
        ({"left"}, "left"),
        ({"right"}, "right"),
        ({"up", "left"}, "left"),
        ({"up", "right"}, "right"),
        ({"left", "right"}, "none"),
        ({"up", "left", "right"}, "forward"),
        ({"down"}, "brake"),
        ({"space"}, "brake"),
        ({"space", "up", "left"}, "brake"),
        ({"shift"}, "none"),
    ],
)
def test_keys_to_label(held, label):
    assert keys_to_label(held) == label


def test_keyboard_vehicle_drives_and_records_the_simulator_headless(monkeypatch, tmp_path):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    from scratchpilot.car.commands.record import sim_keyboard_vehicle
    from scratchpilot.car.hardware.window import CarWindow
    from scratchpilot.car.sessions import Session, SessionWriter

    window = CarWindow("test")
    try:
        with Simulator(seed=2) as sim, SessionWriter(tmp_path, source="sim", driver="keyboard") as writer:
            car, recorder = sim_keyboard_vehicle(sim, window, writer, max_steps=5)
            run = car.run()
            assert run.ended == "max steps" and sim.metrics.steps == 5
            path = writer.path
    finally:
        window.close()
    session = Session.open(path)
    # no key is held on the dummy display: every frame is labelled (and driven) "none"
    assert len(session) == 5 and list(session.labels) == [LABELS.index("none")] * 5
    assert recorder.stats["recorded"] == 5
