"""``automl digits`` within a small budget, and ``tune car`` on a few short simulated tracks."""

from __future__ import annotations

import json
import time

import pytest

optuna = pytest.importorskip("optuna")

from scratchpilot import nn  # noqa: E402
from scratchpilot.car import training  # noqa: E402
from scratchpilot.cli import main  # noqa: E402
from scratchpilot.tune import car as tune_car  # noqa: E402
from scratchpilot.tune.storage import open_storage  # noqa: E402


def test_automl_keeps_its_budget_and_assesses_the_winner(tmp_path, shared_data):
    out = tmp_path / "automl"
    budget = 60
    t0 = time.monotonic()
    assert main(["automl", "digits", "--budget", f"{budget}s", "--train-size", "3000", "--val-size", "500",
                 "--test-size", "1000", "--out", str(out), "--json", str(tmp_path / "a.json")]) == 0
    wall = time.monotonic() - t0
    result = json.loads((tmp_path / "a.json").read_text())
    # a few seconds of fixed costs and estimates (loading, the report, the retraining's price) weigh on a
    # one-minute budget: ±5 % is for real ones (bench/tune.py --parts automl)
    assert 0.8 * budget <= result["seconds"] <= 1.1 * budget and wall <= 1.15 * budget
    assert result["winner_family"] in ("mlp", "cnn") and result["n_trials"] >= 3
    top = result["candidates"][0]
    assert top["value"] == max(c["value"] for c in result["candidates"] if c["family"] == result["winner_family"])
    if result["best_trial"] == result["search_best_trial"]:
        assert result["best_value"] == top["value"]
    else:  # the 1-SE rule kept the defaults
        assert "the defaults kept" in result["selection"] and result["winner_is_default"]
    assert any(c["defaults"] for c in result["candidates"])
    assert result["test_accuracy"] > 0.85 and result["default_test_accuracy"] > 0.85
    low, high = result["test_ci95"]
    assert low < result["test_accuracy"] < high
    model = nn.load(result["model"])
    assert model.metadata["automl"]["params"] == result["best_params"]
    assert model.metadata["test_accuracy"] == result["test_accuracy"]
    html = (out / "report.html").read_text()
    for text in ("Model assessment", "Why the winner won", "Ranked candidates", "How the budget was spent"):
        assert text in html


def test_automl_refuses_a_budget_under_one_trial(tmp_path, shared_data, capsys):
    out = tmp_path / "never"
    assert main(["automl", "digits", "--budget", "2s", "--train-size", "3000", "--val-size", "500",
                 "--out", str(out)]) == 2
    assert "is under one trial" in capsys.readouterr().err
    assert not out.exists()


def test_automl_budget_must_be_a_duration(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["automl", "digits", "--budget", "soon"])
    assert stop.value.code == 2 and "must be a duration" in capsys.readouterr().err


def test_tune_car_scores_on_tuning_tracks_and_compares_with_the_demo(tmp_path):
    out = tmp_path / "car"
    args = ["tune", "car", "--max-steps", "40", "--episodes", "2", "--dagger-episodes", "1", "--tracks", "2",
            "--trials", "3", "--evaluate", "2", "--out", str(out)]
    assert main([*args, "--json", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["n_trials"] == 3 and result["demo_trial"] == 0
    study = optuna.load_study(study_name="car", storage=open_storage(None, out))
    assert study.trials[0].params == tune_car.demo_params()
    assert set(study.trials[1].params) == {"arch", "hidden", "history_lag", "balance", "rounds", "epochs"}
    # scored on the tuning tracks, which are neither the evaluation tracks nor the training tracks
    tuning = set(range(tune_car.TUNING_SEEDS_START, tune_car.TUNING_SEEDS_START + 2))
    evaluation = set(result["evaluation"]["seeds"])
    trained_on = set(range(training.DEMO_TRAIN_SEEDS_START, training.DEMO_TRAIN_SEEDS_START + 2 + 4 * 1))
    assert not tuning & evaluation and not tuning & trained_on and not evaluation & trained_on
    assert {"best", "demo", "expert"} <= set(result["evaluation"])
    model = nn.load(result["model"])
    assert model.metadata["task"] == "pilot" and model.metadata["tuning"]["tuning_tracks"] == sorted(tuning)
    assert model.metadata["tuning"]["params"] == result["best_params"]
    assert len(study.trials[0].user_attrs["tuning_scores"]) == 2
    assert not list((out / "sessions").iterdir())  # each trial's DAgger recordings are removed
    assert "Evaluation tracks 0..1" in (out / "report.html").read_text()
    # the expert recording is made once: a second study in the same folder reuses it
    recording = (out / "expert" / "recording.json").read_text()
    assert main([*args[:-2], "--trials", "4", "--out", str(out)]) == 0
    assert (out / "expert" / "recording.json").read_text() == recording
    # another set of tuning tracks is another study
    assert main([*args[:-6], "--tracks", "3", "--trials", "5", "--out", str(out)]) == 2


def test_the_winner_must_beat_the_defaults_by_more_than_one_standard_error(tmp_path):
    from scratchpilot.tune.automl import select_winner

    def study_with(default_value: float, best_value: float):
        study = optuna.create_study(direction="maximize")
        x = optuna.distributions.FloatDistribution(0, 1)
        study.add_trial(optuna.create_trial(value=default_value, params={"x": 0.5}, distributions={"x": x},
                                            user_attrs={"defaults": "mlp"}))
        study.add_trial(optuna.create_trial(value=best_value, params={"x": 0.1}, distributions={"x": x}))
        return study

    # on 10,000 images the standard error of a difference near 98.5 % is about 0.17 points
    trial, why = select_winner(study_with(0.9854, 0.9869), 10_000)
    assert trial.number == 0 and "defaults kept" in why
    trial, why = select_winner(study_with(0.9854, 0.9890), 10_000)
    assert trial.number == 1 and "more than one standard error" in why
    trial, why = select_winner(study_with(0.9890, 0.9854), 10_000)  # the defaults are the best trial
    assert trial.number == 0 and "best validation accuracy" in why
