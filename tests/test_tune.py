"""Tuning on real Optuna studies with tiny budgets: the CLI end to end, continuing a study, the pruner,
workers sharing one journal file, a worker killed mid-trial, Ctrl-C, and the clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from support import wait_until  # noqa: E402

from scratchpilot import nn  # noqa: E402
from scratchpilot.cli import main  # noqa: E402
from scratchpilot.digits import models  # noqa: E402
from scratchpilot.tune import spaces  # noqa: E402
from scratchpilot.tune.storage import open_storage  # noqa: E402
from scratchpilot.tune.study import Surplus, claim_place, counts, open_study, run_trials  # noqa: E402

#: a study small enough for seconds: 1,500 training and 500 validation images, 2 epochs a trial
TINY = ["--train-size", "1500", "--val-size", "500", "--test-size", "1000", "--epochs", "2"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scratchpilot", *args]


def _study(out: Path, name: str = "digits-mlp"):
    return optuna.load_study(study_name=name, storage=open_storage(None, out))


def _finished_numbers(study) -> list[int]:
    return sorted(t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.PRUNED)))


def test_tune_digits_writes_the_best_model_report_and_json_and_continues(tmp_path, shared_data, capsys):
    out = tmp_path / "run"
    assert main(["tune", "digits", *TINY, "--trials", "5", "--out", str(out), "--json", str(tmp_path / "a.json")]) == 0
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["n_trials"] == 5 and result["study"] == "digits-mlp"
    assert set(result["best_params"]) >= {"depth", "batch_size", "dropout", "weight_decay", "augment", "schedule"}
    # the best model: its parameters and the study in its config, tested once on the test set
    model = nn.load(result["model"])
    tuning = model.metadata["tuning"]
    assert tuning["study"] == "digits-mlp" and tuning["params"] == result["best_params"]
    assert model.metadata["train_config"]["name"].startswith("digits-mlp-trial-")
    assert model.metadata["test_dataset"] == "mnist-test" and result["n_test"] == 1000
    assert result["best_value"] > 0.75 and result["test_accuracy"] > 0.75
    assert tuple(model.metadata["train_config"]["hidden"]) == tuple(
        result["best_params"][f"width_{i + 1}"] for i in range(result["best_params"]["depth"]))
    html = Path(result["report"]).read_text()
    for heading in ("Optimisation history", "Intermediate values", "Parameter importances", "Parallel coordinates",
                    "Best against the defaults", "Every trial"):
        assert heading in html
    assert html.count("data:image/png;base64,") >= 3 and "<script" not in html
    printed = capsys.readouterr().out
    assert "5/5 trials done" in printed and "best " in printed
    # the defaults were the first trial; the second run continues the study to 7 trials
    study = _study(out)
    assert study.trials[0].user_attrs.get("defaults") == "mlp"
    assert study.trials[0].params == spaces.default_params("mlp")
    assert main(["tune", "digits", *TINY, "--trials", "7", "--out", str(out), "--json", str(tmp_path / "b.json")]) == 0
    again = json.loads((tmp_path / "b.json").read_text())
    assert again["n_trials"] == 7 and _finished_numbers(_study(out)) == list(range(7))
    # only the best trial's model is kept beside best.npz
    assert [p.name for p in (out / "trials").iterdir()] == [f"trial-{again['best_trial']:04d}.npz"]


def test_default_parameters_replay_the_hand_set_configs():
    mlp = spaces.config_from_params(spaces.default_params("mlp"), "mlp", models.BEST.epochs)
    cnn = spaces.config_from_params(spaces.default_params("cnn"), "cnn", models.CNN.epochs)
    for tuned, hand in ((mlp, models.BEST), (cnn, models.CNN)):
        for field in ("hidden", "optimizer", "lr", "momentum", "batch_size", "dropout", "schedule", "augment_shift",
                      "augment_degrees", "augment_scale", "dense_hidden", "arch", "epochs"):
            assert getattr(tuned, field) == getattr(hand, field), field
    assert cnn.weight_decay == 1e-6 and mlp.weight_decay == models.BEST.weight_decay


def test_hyperband_stops_trials_early_and_spends_fewer_epochs(tmp_path, shared_data):
    out = tmp_path / "pruned"
    args = ["tune", "digits", "--train-size", "1000", "--val-size", "500", "--test-size", "500", "--epochs", "6",
            "--trials", "10", "--out", str(out), "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    study = _study(out)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert result["n_pruned"] == len(pruned) >= 3
    assert all(len(t.intermediate_values) == t.user_attrs["epochs"] < 6 for t in pruned)
    assert result["epochs_spent"] < 0.8 * 10 * 6


def test_two_workers_share_one_journal_and_finish_the_count_exactly(tmp_path, shared_data):
    out = tmp_path / "workers"
    args = _cli("tune", "digits", *TINY, "--trials", "8", "--workers", "2", "--out", str(out),
                "--json", str(tmp_path / "w.json"))
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "w.json").read_text())
    study = _study(out)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert result["n_trials"] == len(finished) == 8 and result["workers"] == 2
    assert len({t.number for t in finished}) == 8  # none run twice
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both workers ran trials
    others = [t for t in study.trials if t not in finished]
    assert all(t.user_attrs.get("surplus") and "epochs" not in t.user_attrs for t in others)  # none lost


def _wait_for_running_trial(out: Path, timeout_s: float = 120.0):
    """The first trial that has reported an epoch while still running (its worker is mid-trial)."""
    found = []

    def running() -> bool:
        if not (out / "study.journal").exists():
            return False
        try:
            study = _study(out)
        except KeyError:
            return False
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if t.intermediate_values:
                found.append(t)
                return True
        return False

    assert wait_until(running, timeout_s=timeout_s, interval_s=0.05), "no trial got going"
    return found[0]


def test_a_worker_killed_mid_trial_is_retried_and_the_study_completes(tmp_path, shared_data):
    out = tmp_path / "killed"
    args = _cli("tune", "digits", "--train-size", "4000", "--val-size", "500", "--test-size", "500", "--epochs", "4",
                "--trials", "6", "--workers", "2", "--heartbeat", "2", "--out", str(out),
                "--json", str(tmp_path / "k.json"))
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _wait_for_running_trial(out)
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        assert pid != process.pid
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "a worker failed" in stdout
    study = _study(out)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) == 6 == json.loads((tmp_path / "k.json").read_text())["n_trials"]
    killed = study.trials[victim.number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in finished if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params


def test_ctrl_c_loses_at_most_the_running_trial_and_the_rerun_continues(tmp_path, shared_data):
    out = tmp_path / "interrupted"
    args = _cli("tune", "digits", "--train-size", "4000", "--val-size", "500", "--test-size", "500", "--epochs", "4",
                "--out", str(out))
    process = subprocess.Popen([*args, "--trials", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_running_trial(out)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    study = _study(out)
    assert len(study.get_trials(states=(optuna.trial.TrialState.FAIL,))) == 1
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    before = _finished_numbers(study)
    target = len(before) + 2
    again = subprocess.run([*args, "--trials", str(target)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    after = _finished_numbers(_study(out))
    assert len(after) == target and set(before) <= set(after)


def test_a_stale_trial_in_the_journal_is_failed_and_queued_again(tmp_path):
    storage = open_storage(None, tmp_path, heartbeat_s=1)
    study, created = open_study(storage, "s", {"task": "test"})
    assert created
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # its heartbeat is fresh
    storage.set_trial_system_attr(trial._trial_id, "heartbeat", time.time() - 10)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert study.trials[1].state == optuna.trial.TrialState.WAITING
    assert study.trials[1].params == study.trials[0].params and study.trials[1].system_attrs["failed_trial"] == 0


def test_the_last_place_goes_to_one_trial_only(tmp_path):
    storage = open_storage(None, tmp_path)
    study, _ = open_study(storage, "s", {"task": "test"})
    first, second = study.ask(), study.ask()  # two workers asking at once for the last of 1 place
    claim_place(first, 1)
    with pytest.raises(Surplus):
        claim_place(second, 1)
    assert second.user_attrs["surplus"] is True

    def objective(trial):
        claim_place(trial, 3)
        return trial.suggest_float("x", 0, 1)

    study.tell(first, 0.5)
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    assert run_trials(study, objective, 3) == 2
    c = counts(study)
    assert c["finished"] == 3 and c["surplus"] == 1


def test_bad_input_is_refused_with_clear_errors_and_nothing_written(tmp_path, shared_data, capsys):
    out = tmp_path / "never"
    for args, message in (
            (["--space", "rnn"], "unknown search space"),
            (["--storage", "redis://localhost/0"], "unknown storage 'redis'"),
            (["--storage", "not a url"], "not a database URL"),
            (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open it"),
            (["--train-size", "999999"], "only"),
    ):
        assert main(["tune", "digits", *TINY, "--out", str(out), *args]) == 2, args
        assert message in capsys.readouterr().err, args
        assert not out.exists(), args
    # a study made with one space is not continued with another
    made = tmp_path / "made"
    assert main(["tune", "digits", *TINY, "--trials", "1", "--out", str(made)]) == 0
    journal = (made / "study.journal").read_bytes()
    assert main(["tune", "digits", *TINY, "--trials", "2", "--space", "cnn", "--study", "digits-mlp",
                 "--out", str(made)]) == 2
    assert "was created with space 'mlp', not 'cnn'" in capsys.readouterr().err
    assert main(["tune", "digits", "--train-size", "1400", "--val-size", "500", "--epochs", "2", "--trials", "2",
                 "--out", str(made)]) == 2
    assert "was created with n_train 1500, not 1400" in capsys.readouterr().err
    assert (made / "study.journal").read_bytes() == journal


def test_a_seeded_study_repeats_its_trials(tmp_path, shared_data):
    values = []
    for run in ("a", "b"):
        assert main(["tune", "digits", *TINY, "--trials", "3", "--out", str(tmp_path / run)]) == 0
        study = _study(tmp_path / run)
        values.append([(t.params, t.value) for t in study.trials])
    assert values[0] == values[1]
    assert np.isfinite([v for _, v in values[0] if v is not None]).all()


def test_a_labelled_kaggle_csv_is_tested_on_a_held_out_seventh(tmp_path, shared_data, capsys):
    csv = tmp_path / "train.csv"
    assert main(["data", "export-csv", "mnist", str(csv), "--limit", "2100"]) == 0
    out = tmp_path / "kaggle"
    assert main(["tune", "digits", "--data", str(csv), "--val-size", "300", "--epochs", "2", "--trials", "2",
                 "--out", str(out), "--json", str(tmp_path / "k.json")]) == 0
    result = json.loads((tmp_path / "k.json").read_text())
    assert result["n_test"] == 300 and "held-out 1/7" in result["test_dataset"]  # 2,100 / 7
    study = _study(out)
    assert study.user_attrs["n_train"] == 2100 - 300 - 300 and study.user_attrs["n_val"] == 300
    test_csv = tmp_path / "test.csv"
    assert main(["data", "export-csv", "mnist-test", str(test_csv), "--limit", "50", "--no-labels"]) == 0
    assert main(["tune", "digits", "--data", str(test_csv), "--out", str(tmp_path / "x")]) == 2
    assert "has no labels" in capsys.readouterr().err


def test_a_worker_whose_trial_was_failed_as_stale_goes_on(tmp_path, capsys):
    storage = open_storage(None, tmp_path)
    study, _ = open_study(storage, "s", {"task": "test"})
    calls = []

    def objective(trial):
        claim_place(trial, 2)
        calls.append(trial.number)
        if trial.number == 0:  # another worker found this trial silent and failed it meanwhile
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        return trial.suggest_float("x", 0, 1)

    assert run_trials(study, objective, 2) == 2
    assert calls == [0, 1, 2] and counts(study)["finished"] == 2
    assert "failed as stale" in capsys.readouterr().err


def test_ctrl_c_outside_training_waits_for_a_safe_point():
    from scratchpilot.tune.interrupt import DeferredInterrupt

    interrupt = DeferredInterrupt()
    with interrupt.installed():
        os.kill(os.getpid(), signal.SIGINT)  # as if during a storage write: only noted
        assert interrupt.pending
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    interrupt = DeferredInterrupt()
    with interrupt.installed(), pytest.raises(KeyboardInterrupt), interrupt.interruptible():
        with interrupt.shielded():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the shielded call finishes ...
            finished = True
        raise AssertionError("not reached: the interrupt is raised when the shielded call ends")
    assert finished


def test_the_best_of_tied_trials_is_the_earliest(tmp_path):
    from scratchpilot.tune.study import best_trial

    study, _ = open_study(open_storage(None, tmp_path), "ties", {"task": "test"})
    for value in (0.5, 0.9, 0.7, 0.9):
        study.add_trial(optuna.trial.create_trial(value=value))
    assert best_trial(study).number == 1
