"""The simulator workflow end to end (short episodes), the pilot's parts, and training on a real tub."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scratchpilot.car.checking import check_pilot, picked_frames
from scratchpilot.car.pilot import Pilot, with_history
from scratchpilot.car.sessions import Session
from scratchpilot.car.sim.runs import drive_sim, record_expert
from scratchpilot.car.training import learn_to_drive, train_pilot
from scratchpilot.cli import main
from scratchpilot.nn import load


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    path, episodes = record_expert(root, [1000, 1001], max_steps=150, progress=False)
    return root, path, episodes


def test_record_expert_writes_a_session_with_expert_labels(recorded):
    from scratchpilot.car.sessions import Session

    _, path, episodes = recorded
    session = Session.open(path)
    assert len(session) == 300 and session.frame_shape == (96, 96, 3)
    assert sorted(np.unique(session.episodes)) == [0, 1]
    assert set(session.labels) <= set(range(5)) and session.meta["driver"] == "expert"
    assert [e["steps"] for e in episodes] == [150, 150]
    # the expert mostly accelerates at the start of a track
    assert np.mean(session.labels == session.label_names.index("forward")) > 0.3


def test_train_check_and_drive(recorded, tmp_path):
    root, path, _ = recorded
    model, report = train_pilot([path], epochs=3, progress=False)
    # two episodes are too few to hold one out: whole blocks of up to 100 consecutive frames are
    assert report["frames"] == 300 and report["validation_frames"] in (50, 100)
    assert model.metadata["preprocessing"]["crop"] == {"top": 0, "bottom": 84, "left": 0, "right": 96}
    assert model.n_inputs == 2 * 42 * 48  # pixels and their change over history_lag frames
    model.save(tmp_path / "pilot.npz")
    pilot = Pilot.load(tmp_path / "pilot.npz")
    check = check_pilot(pilot, [path], tmp_path / "sheet.png", thumbnails=8)
    assert check["frames"] == 300 and np.array(check["confusion"]).sum() == 300
    assert (tmp_path / "sheet.png").read_bytes()[:4] == b"\x89PNG"
    result = drive_sim(pilot, [3], max_steps=120, video=tmp_path / "drive.gif", progress=False)
    track = result["tracks"][0]
    assert track["steps"] == 120 and track["seed"] == 3
    assert result["decide_ms_p50"] > 0 and result["loop_hz"] > 0  # speed: bench/pilot_latency.py
    assert sum(track["labels"].values()) == 120  # one command sent per frame
    assert (tmp_path / "drive.gif").read_bytes()[:6] == b"GIF89a"


def test_car_cli_train_and_check(recorded, tmp_path, capsys):
    root, path, _ = recorded
    model = tmp_path / "p.npz"
    assert main(["car", "train", "--sessions", str(root), "--model", str(model), "--epochs", "2",
                 "--json", str(tmp_path / "t.json")]) == 0
    figures = json.loads((tmp_path / "t.json").read_text())
    assert figures["frames"] == 300 and figures["validation_accuracy"] is not None
    assert main(["car", "check", "--model", str(model), "--sessions", str(path),
                 "--sheet", str(tmp_path / "s.png"), "--json", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["frames"] == 300
    assert main(["car", "sessions", str(root)]) == 0
    assert path.name in capsys.readouterr().out


def test_car_cli_trains_for_other_looks_and_drives_each(recorded, tmp_path, capsys):
    root, _, _ = recorded
    model = tmp_path / "robust.npz"
    assert main(["car", "train", "--sessions", str(root), "--model", str(model), "--epochs", "1", "--colour",
                 "principal", "--normalise", "zscore", "--augment", "1", "--patience", "1",
                 "--json", str(tmp_path / "t.json")]) == 0
    figures = json.loads((tmp_path / "t.json").read_text())
    assert figures["augmented_copies"] == 1 and figures["validation_accuracy_augmented"] is not None
    assert figures["best_epoch"] == 0  # one epoch, kept
    meta = load(model).metadata
    assert meta["augmentation"]["copies"] == 1 and meta["preprocessing"]["colour"] == "principal"
    assert "validation accuracy under augmentation" in capsys.readouterr().out
    out = tmp_path / "d.json"
    assert main(["car", "drive", "--model", str(model), "--sim", "--tracks", "1", "--appearance", "standard",
                 "dusk", "noise", "--json", str(out), "--log", str(tmp_path / "drive-log")]) == 0
    conditions = json.loads(out.read_text())["conditions"]
    # the pilot carries the frames' profile; its log, read back against it, shows dusk as a shift in brightness
    assert meta["profile"]["kind"] == "frames" and set(meta["profile"]["features"]) == {
        "brightness", "contrast", "edge_density"}
    steps = [len(conditions[name]["tracks"]) and sum(conditions[name]["tracks"][0]["labels"].values())
             for name in ("standard", "dusk", "noise")]
    assert main(["report", "monitor", str(tmp_path / "drive-log"), "--model", str(model), "--window",
                 f"{min(steps)}req", "--out", str(tmp_path / "m.html"), "--json", str(tmp_path / "m.json")]) == 0
    monitor = json.loads((tmp_path / "m.json").read_text())
    assert monitor["records"] == sum(steps) and not monitor["problems"]
    # (the profile holds only the first 150 frames of two tracks, so even the standard look has moved on from
    # it over a whole track: dusk is the same drive 40 % darker)
    first, dusk = monitor["windows"][0], monitor["windows"][-(-steps[0] // min(steps))]  # the first all-dusk one
    assert dusk["verdict"] == "drift" and "brightness" in " ".join(dusk["reasons"]), dusk["reasons"]
    assert dusk["features"]["brightness"]["psi"] > 3 * first["features"]["brightness"]["psi"]
    assert dusk["features"]["brightness"]["mean"] < 0.7 * first["features"]["brightness"]["mean"]
    assert list(conditions) == ["standard", "dusk", "noise"]
    assert conditions["dusk"]["appearance"]["brightness"] == 0.6
    assert conditions["noise"]["appearance"]["noise"] == 12.0
    text = capsys.readouterr().out
    assert text.count("condition") == 1 and "\ndusk " in text
    with pytest.raises(SystemExit):
        main(["car", "drive", "--model", str(model), "--sim", "--appearance", "fog"])
    assert "invalid choice: 'fog'" in capsys.readouterr().err
    for option, value in (("--augment", "-1"), ("--patience", "0")):  # refused while parsing (test_cli_options)
        with pytest.raises(SystemExit):
            main(["car", "train", "--sessions", str(root), "--model", str(model), option, value])
        assert f"argument {option}: must be an integer" in capsys.readouterr().err


@pytest.mark.parametrize(("arch", "epochs", "robust"), [("mlp", 25, False), ("cnn", 6, False), ("mlp", 25, True)])
def test_tub_pilot_beats_the_majority_baseline(shared_data, tmp_path, arch, epochs, robust):
    """A real car's frames: a held-out split (blocks of consecutive frames, never single frames); also
    with the demo's colour-blind preprocessing and augmentation (bench/tub_robustness.py compares them)."""
    from scratchpilot.car.sessions.importers import import_tub
    from scratchpilot.car.training import DEMO_AUGMENTATION, DEMO_PREPROCESS

    session = import_tub(shared_data / "donkeycar-tub" / "tub.tar.gz", tmp_path)
    model, report = train_pilot([session], epochs=epochs, history_lag=0, hidden=64, seed=0, progress=False,
                                arch=arch, preprocess_options=DEMO_PREPROCESS if robust else None,
                                augmentation=DEMO_AUGMENTATION if robust else None)
    assert report["frames"] == 1000 and report["validation_frames"] >= 100 and report["arch"] == arch
    assert report["validation_accuracy"] > report["validation_majority_baseline"] + 0.05, report


def test_cnn_pilot_sees_at_drive_time_what_it_was_trained_on(recorded, tmp_path, capsys):
    """The CNN pilot: its input is the frame and its motion as two channels, built the same way for
    training (model_inputs) and driving (Pilot.features); check, drive, the CLI and report model take it."""
    from scratchpilot.car.pilot import model_inputs
    from scratchpilot.car.sessions import load_frames

    root, path, _ = recorded
    model, report = train_pilot([path], epochs=1, arch="cnn", progress=False)
    assert model.input_shape == (42, 48, 2) and model.metadata["input_layout"] == "image"
    assert any(type(layer).__name__ == "Conv2D" for layer in model.layers)
    model.save(tmp_path / "cnn.npz")
    pilot = Pilot.load(tmp_path / "cnn.npz")
    frames = load_frames([path], pilot.preprocess)
    trained_on = model_inputs(pilot, frames.features, frames.groups)
    raw = Session.open(path).frames()[:5]
    live = np.concatenate([pilot.features(frame) for frame in raw])
    np.testing.assert_allclose(live, trained_on[:5], atol=1e-6)
    assert check_pilot(pilot, [path])["frames"] == 300
    result = drive_sim(pilot, [3], max_steps=30, progress=False)
    assert result["tracks"][0]["steps"] == 30 and sum(result["tracks"][0]["labels"].values()) == 30
    assert main(["car", "train", "--arch", "cnn", "--sessions", str(root), "--model", str(tmp_path / "c.npz"),
                 "--epochs", "1"]) == 0
    assert load(tmp_path / "c.npz").metadata["arch"] == "cnn"
    out = tmp_path / "report.json"
    assert main(["report", "model", str(tmp_path / "cnn.npz"), str(root), "--out", str(tmp_path / "r.html"),
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 300
    capsys.readouterr()


def test_with_history_matches_the_pilot_at_drive_time():
    """Training and driving compute the history features the same way."""
    frames = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    groups = np.array([0, 0, 0, 0, 1, 1])
    stacked = with_history(frames, groups, lag=2)
    np.testing.assert_array_equal(stacked[:, :4], frames)
    np.testing.assert_allclose(stacked[3, 4:], frames[3] - frames[1])
    np.testing.assert_allclose(stacked[1, 4:], frames[1] - frames[0])
    np.testing.assert_allclose(stacked[5, 4:], frames[5] - frames[4])

    class Identity:
        def __call__(self, frame):
            return frame.reshape(1, -1)

    pilot = Pilot.__new__(Pilot)
    pilot.history_lag, pilot._past, pilot.preprocess = 2, [], Identity()
    live = np.concatenate([pilot.features(f) for f in frames[:4]])
    np.testing.assert_allclose(live, stacked[:4])


def test_sampling_policy_follows_the_probabilities(tmp_path):
    from scratchpilot import nn

    model = nn.Sequential([nn.Dense(4, 3)], seed=0)
    model.layers[0].params["W"][:] = 0
    model.layers[0].params["b"][:] = np.log([0.6, 0.3, 0.1])
    model.metadata = {"labels": ["a", "b", "c"], "preprocessing": {"input_shape": [2, 2], "scale": True}}
    pilot = Pilot(model, policy="sample", seed=1)
    picks = [pilot.decide(np.zeros((2, 2), np.uint8))[0] for _ in range(3000)]
    assert abs(picks.count("a") / 3000 - 0.6) < 0.04 and abs(picks.count("c") / 3000 - 0.1) < 0.03
    assert Pilot(model).decide(np.zeros((2, 2), np.uint8))[0] == "a"


def test_pilot_refuses_a_digits_model(tmp_path):
    from scratchpilot import nn

    model = nn.Sequential([nn.Dense(4, 2)], seed=0)
    with pytest.raises(ValueError, match="not a pilot model"):
        Pilot(model)
    model.save(tmp_path / "m.npz")
    assert main(["car", "drive", "--model", str(tmp_path / "m.npz"), "--sim"]) == 2
    assert load(tmp_path / "m.npz").n_inputs == 4


def test_demo_runs_end_to_end(tmp_path, capsys):
    """The whole main job with tiny settings: expert, one DAgger round, one unseen track."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--episodes", "2", "--rounds", "1", "--dagger-episodes", "1",
                 "--tracks", "1", "--max-steps", "120", "--json", str(tmp_path / "demo.json")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert json.loads((tmp_path / "demo.json").read_text())["mean_score"] == results["mean_score"]
    assert {"mean_score", "decide_ms_p99", "loop_hz", "tracks", "expert_mean_score"} <= set(results)
    assert results["tracks"][0]["steps"] == 120 and len(results["learning_rounds"]) == 3  # expert + 2 rounds
    # the round whose model drove best on its own training tracks is the one kept
    rounds = [r for r in results["learning_rounds"] if r["round"] != "expert"]
    best = max(rounds, key=lambda r: np.mean(r["scores"]))
    assert results["train_report"]["chosen_round"] == best["round"]
    assert results["train_report"]["chosen_round_mean_score"] == pytest.approx(np.mean(best["scores"]))
    # 120 frames of a pilot trained on 240: it still drives forward along the road (the expert gets ~100)
    assert results["tracks"][0]["tiles_visited"] > 5
    assert (out / "pilot.npz").exists() and (out / "drive.gif").exists()
    assert load(out / "pilot.npz").metadata["task"] == "pilot"
    text = capsys.readouterr().out
    assert "expert mean" in text and "round 1: trained" in text
    # every look, side by side with the expert (whose score does not depend on the look)
    assert list(results["conditions"]) == ["standard", "colours", "dusk", "noise"]
    assert results["conditions"]["standard"]["mean_score"] == results["mean_score"]
    for name in ("colours", "dusk", "noise"):
        assert f"\n{name} " in text and results["conditions"][name]["tracks"][0]["steps"] == 120
    assert "vs expert" in text


def test_learn_to_drive_can_return_every_round_as_one_ensemble(tmp_path):
    from scratchpilot.nn import Ensemble

    model, report, history = learn_to_drive(tmp_path, episodes=2, rounds=1, dagger_episodes=1, max_steps=60,
                                            progress=False, log=lambda line: None, epochs=1, combine="ensemble")
    assert isinstance(model, Ensemble) and len(model.members) == 2  # rounds 0 and 1
    assert report["chosen_round"] == "ensemble of all rounds"
    assert model.metadata["preprocessing"]["colour"] == "principal"  # the demo's recipe by default
    model.save(tmp_path / "ensemble.npz")
    pilot = Pilot.load(tmp_path / "ensemble.npz")
    assert drive_sim(pilot, [3], max_steps=20, progress=False)["tracks"][0]["steps"] == 20
    with pytest.raises(ValueError, match="combine must be 'best' or 'ensemble'"):
        learn_to_drive(tmp_path, combine="vote")


def test_picked_frames_match_the_stacked_frames(recorded):
    from scratchpilot.car.sessions import Session

    _, path, _ = recorded
    session = Session.open(path)
    positions = np.array([0, 1, 149, 150, 251, 299])  # across chunk and episode boundaries
    np.testing.assert_array_equal(picked_frames([session], positions), session.frames()[positions])
