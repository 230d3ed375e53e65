"""Tuning and AutoML, measured: the pruner, the workers, PostgreSQL, ``automl digits`` and ``tune car``.

    python bench/tune.py [--parts pruning,scale,postgres,automl,car] [--automl-budget 30m]
                         [--car-timeout 25m] [--json PATH]

- pruning: random search (its trials do not depend on earlier ones, so every study runs the very same
  ``--trials`` configurations) without a pruner, with the median pruner and with Hyperband, on 5,000
  training / 3,000 validation MNIST images, up to 6 epochs a trial: epochs spent and best validation
  accuracy side by side. ``pruning-tpe``: TPE (the command's default) with Hyperband and without, on
  10,000 / 5,000 images and 8 epochs; there the pruner also changes what TPE samples next.
- scale: ``--workers 1`` and ``--workers 2`` on the journal file, one BLAS thread each, each for the same
  wall-clock window (``--timeout``): finished trials per hour.
- postgres: two worker processes sharing one study on a PostgreSQL server started here (Debian's package):
  the trial count, duplicate trial numbers, trials per hour.
- automl: ``automl digits --budget 30m`` on MNIST: the winner's test accuracy beside the hand-set default of
  its family trained in the same run, and the budget kept.
- car: ``tune car`` for ``--car-timeout``, then the best recipe's and the demo recipe's pilots (the study's
  first trial) on the demo's ten evaluation tracks, with the expert on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import ensure_data_env, table, write_result  # noqa: E402


def _run(args: list[str], timeout: float = 7200) -> dict:
    """Run ``scratchpilot ARGS --json F`` in a fresh process; its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        done = subprocess.run([sys.executable, "-m", "scratchpilot", *args, "--json", str(path)], text=True,
                              timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"scratchpilot {' '.join(args)} failed:\n{done.stdout[-3000:]}")
        return json.loads(path.read_text())


def pruning(work: Path, trials: int, sampler: str, pruners: tuple[str, ...], data: list[str]) -> dict:
    rows = []
    for pruner in pruners:
        t0 = time.perf_counter()
        r = _run(["tune", "digits", *data, "--trials", str(trials), "--pruner", pruner, "--sampler", sampler,
                  "--out", str(work / f"{sampler}-{pruner}")])
        rows.append({"sampler": sampler, "pruner": pruner, "trials": r["n_trials"], "pruned": r["n_pruned"],
                     "epochs_spent": r["epochs_spent"], "best_val": r["best_value"], "best_trial": r["best_trial"],
                     "test": r["test_accuracy"], "seconds": time.perf_counter() - t0})
    print(table(rows, ["sampler", "pruner", "trials", "pruned", "epochs_spent", "best_val", "best_trial", "test",
                       "seconds"]))
    unpruned = next(r for r in rows if r["pruner"] == "none")
    out = {"rows": rows}
    for r in rows:
        if r is not unpruned:
            saved = 1 - r["epochs_spent"] / unpruned["epochs_spent"]
            gap = (unpruned["best_val"] - r["best_val"]) * 100
            out[r["pruner"]] = {"epochs_saved": saved, "best_val_gap_points": gap}
            print(f"{sampler} + {r['pruner']}: {saved:.1%} fewer epochs; best validation accuracy {gap:+.2f} points "
                  f"below the unpruned study's")
    return out


#: the pruning studies' data: 5,000 training and 3,000 validation MNIST images, up to 6 epochs a trial
PRUNING_DATA = ["--train-size", "5000", "--val-size", "3000", "--test-size", "2000", "--epochs", "6"]
#: the first run's data (TPE + Hyperband against no pruner, 2026-12-03)
TPE_PRUNING_DATA = ["--train-size", "10000", "--val-size", "5000", "--test-size", "2000", "--epochs", "8"]


def scale(work: Path, window_s: int) -> dict:
    """Trials per hour with 1 and 2 workers, every trial the same configuration (the MLP defaults, queued):
    trials of sampled configurations differ several-fold in cost, and two runs sample different ones."""
    import optuna

    from scratchpilot.tune import spaces
    from scratchpilot.tune.storage import open_storage

    data = ["--train-size", "5000", "--val-size", "1000", "--test-size", "1000", "--epochs", "3", "--pruner", "none"]
    rows = []
    for workers in (1, 2):
        out = work / f"scale-{workers}"
        _run(["tune", "digits", *data, "--trials", "1", "--out", str(out)])  # the study; its trial 0 is the defaults
        study = optuna.load_study(study_name="digits-mlp", storage=open_storage(None, out))
        for _ in range(400):
            study.enqueue_trial(spaces.default_params("mlp"))
        t0 = time.perf_counter()
        _run(["tune", "digits", *data, "--trials", "401", "--timeout", f"{window_s}s", "--workers", str(workers),
              "--threads", "1", "--out", str(out)])
        seconds = time.perf_counter() - t0
        study = optuna.load_study(study_name="digits-mlp", storage=open_storage(None, out))
        done = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if t.number > 0]
        mean_s = sum(t.duration.total_seconds() for t in done) / len(done)
        rows.append({"workers": workers, "blas_threads": 1, "window_s": window_s, "trials": len(done),
                     "trials_per_hour": len(done) / window_s * 3600, "mean_trial_s": mean_s, "command_s": seconds})
    print(table(rows, ["workers", "blas_threads", "window_s", "trials", "trials_per_hour", "mean_trial_s",
                       "command_s"]))
    ratio = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]
    slower = rows[1]["mean_trial_s"] / rows[0]["mean_trial_s"]
    print(f"2 workers / 1 worker: {ratio:.2f}x the trials per hour (each trial {slower:.2f}x as long with the "
          f"other worker beside it)")
    return {"rows": rows, "ratio": ratio}


def postgres(work: Path, trials: int) -> dict:
    import optuna
    from postgres_server import postgres_server

    data = ["--train-size", "3000", "--val-size", "1000", "--test-size", "1000", "--epochs", "2"]
    with postgres_server() as url:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "scratchpilot", "tune", "digits", *data,
                                   "--trials", str(trials),
                                   "--storage", url, "--study", "bench", "--threads", "1", "--out",
                                   str(work / f"pg-{k}")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for k in range(2)]
        outputs = [p.communicate(timeout=3600)[0] for p in procs]
        seconds = time.perf_counter() - t0
        for p, text in zip(procs, outputs, strict=True):
            if p.returncode:
                raise RuntimeError(text[-3000:])
        study = optuna.load_study(study_name="bench", storage=url)
        finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
        numbers = [t.number for t in study.trials]
        result = {"target": trials, "finished": len(finished), "all_trials": len(numbers),
                  "duplicate_numbers": len(numbers) - len(set(numbers)),
                  "workers_seen": len({t.user_attrs.get("worker") for t in finished}), "seconds": seconds,
                  "trials_per_hour": len(finished) / seconds * 3600}
    print(table([result], list(result)))
    return result


def automl(work: Path, budget: str) -> dict:
    r = _run(["automl", "digits", "--budget", budget, "--out", str(work / "automl")], timeout=7200)
    keys = ["winner_family", "best_trial", "best_value", "test_accuracy", "default_test_accuracy", "seconds",
            "budget_s", "budget_kept", "n_trials", "winner_is_default"]
    print(table([{k: r.get(k) for k in keys}], keys))
    print("chosen configuration:", json.dumps(r["best_params"]), "--", r["selection"])
    if "runner_up_trial" in r:
        print(f"the runner-up (trial {r['runner_up_trial']}), retrained the same way: "
              f"{r['runner_up_test_accuracy']:.4f} test")
    extra = ("runner_up_trial", "runner_up_validation", "runner_up_test_accuracy", "search_best_trial")
    return {**{k: r[k] for k in (*keys, "best_params", "phases", "test_ci95", "default_test_ci95",
                                 "calibration_s_per_epoch", "candidates", "selection")},
            **{k: r[k] for k in extra if k in r}}


def car(work: Path, timeout: str) -> dict:
    r = _run(["tune", "car", "--trials", "100", "--timeout", timeout, "--tracks", "4", "--evaluate", "10",
              "--out", str(work / "car")], timeout=7200)
    ev = r["evaluation"]
    rows = [{"pilot": name, "trial": ev[name].get("trial"), "eval_mean_score": ev[name]["mean_score"]}
            for name in ("best", "demo", "expert") if name in ev]
    print(table(rows, ["pilot", "trial", "eval_mean_score"]))
    print(f"trials {r['n_trials']} ({r['n_pruned']} pruned); best params {json.dumps(r['best_params'])}")
    return {"n_trials": r["n_trials"], "n_pruned": r["n_pruned"], "best_params": r["best_params"],
            "best_tuning_score": r["best_value"], "demo_tuning_score": r.get("demo_tuning_score"),
            "evaluation": ev, "seconds": r["seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="pruning,scale,postgres")  # also pruning-tpe, automl, car
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--window", type=int, default=150, help="seconds of each scale run")
    parser.add_argument("--automl-budget", default="30m")
    parser.add_argument("--car-timeout", default="25m")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ensure_data_env()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = Path(tmp)
        for part in args.parts.split(","):
            print(f"\n--- {part} ---", flush=True)
            t0 = time.perf_counter()
            if part == "pruning":  # random search: the same trials with and without each pruner
                results[part] = pruning(work, args.trials, "random", ("none", "median", "hyperband"), PRUNING_DATA)
            elif part == "pruning-tpe":  # the command's default sampler: the pruner changes what TPE samples next
                results[part] = pruning(work, args.trials, "tpe", ("hyperband", "none"), TPE_PRUNING_DATA)
            elif part == "scale":
                results[part] = scale(work, args.window)
            elif part == "postgres":
                results[part] = postgres(work, 16)
            elif part == "automl":
                results[part] = automl(work, args.automl_budget)
            elif part == "car":
                results[part] = car(work, args.car_timeout)
            else:
                raise SystemExit(f"unknown part {part!r}")
            results[part]["bench_seconds"] = time.perf_counter() - t0
            print(f"({part}: {time.perf_counter() - t0:.0f} s)", flush=True)
    name = "tune" if args.parts == "pruning,scale,postgres,automl,car" else "tune-" + args.parts.replace(",", "-")
    write_result(name, results, also=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
