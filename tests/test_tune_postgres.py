"""Two workers on two "machines" (two processes, two output folders) sharing one study on a real PostgreSQL
server: Debian's package, started by the test on a loopback port and stopped after."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

from postgres_server import postgres_server  # noqa: E402


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with postgres_server() as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


def test_two_workers_share_a_study_on_postgresql(tmp_path, shared_data, postgres_url):
    def worker(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "scratchpilot", "tune", "digits", "--train-size", "1500", "--val-size", "500",
             "--test-size", "1000", "--epochs", "2", "--trials", "8", "--storage", postgres_url, "--study", "shared",
             "--out", str(tmp_path / name), "--json", str(tmp_path / f"{name}.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    workers = [worker("machine-a"), worker("machine-b")]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, stderr) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, stderr
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    numbers = [t.number for t in study.trials]
    assert len(finished) == 8 and len(numbers) == len(set(numbers))
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    assert sum(1 for t in study.trials if t.user_attrs.get("defaults")) == 1  # queued once, by the creator
    results = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("machine-a", "machine-b")]
    assert all(r["n_trials"] == 8 for r in results)
    assert results[0]["best_trial"] == results[1]["best_trial"]
    assert all("postgresql://tuner@127.0.0.1" in r["storage"] for r in results)
    # each machine wrote its own best model: the one without the best trial's file trained it again
    assert sum(r["retrained"] for r in results) <= 1
    assert abs(results[0]["best_value"] - results[1]["best_value"]) == 0
