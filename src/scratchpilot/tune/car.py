"""``tune car``: the pilot's training recipe, scored by closed-loop driving on tuning tracks.

A trial learns to drive as the demo does (the scripted expert's recording, then DAgger rounds) with its
own settings: the network (MLP or CNN, hidden width), the history lag, the class balancing, the number of
DAgger rounds and the epochs. Its score is the chosen pilot's mean score on the *tuning* tracks (seeds from
:data:`TUNING_SEEDS_START`), which are neither the tracks it learned on (from 1000) nor the evaluation tracks
the demo drives (below 1000). Each DAgger round's mean score on its new tracks (the same tracks for every
trial) is reported to a median pruner. The expert's recording is the same for every trial and is made once.
The demo recipe is the study's first trial, so the best settings are compared with it in one study.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import optuna

from .interrupt import INTERRUPT
from .storage import describe, open_storage
from .study import Progress, best_trial, claim_place, counts, open_study, run_trials, worker_id

#: seeds of the tracks a trial's pilot is scored on: not the training tracks, not the evaluation tracks
TUNING_SEEDS_START = 3000
ARCHS = ("mlp", "cnn")
HIDDEN = (64, 128, 256)


def demo_params() -> dict:
    """The demo's recipe as parameters of the space."""
    from ..car import training

    return {"arch": training.DEMO_ARCH, "hidden": 128, "history_lag": 2, "balance": 0.5,
            "rounds": training.DEMO_DAGGER_ROUNDS, "epochs": training.DEMO_EPOCHS}


def suggest(trial) -> dict:
    """The trial's recipe: network, hidden width, history lag, class balancing, DAgger rounds, epochs."""
    arch = trial.suggest_categorical("arch", ARCHS)
    return {"arch": arch, "hidden": trial.suggest_categorical("hidden", HIDDEN),
            "history_lag": trial.suggest_int("history_lag", 0, 4), "balance": trial.suggest_float("balance", 0.0, 1.0),
            "rounds": trial.suggest_int("rounds", 0, 3), "epochs": trial.suggest_int("epochs", 4, 14)}


def _expert_recording(out: Path, episodes: int, max_steps: int | None, progress: bool):
    """The expert's recording of the training tracks, made once per output folder and reused."""
    from ..car import training
    from ..car.sim.runs import record_expert
    from ..util.files import read_json, write_json

    folder = out / "expert"
    index = folder / "recording.json"
    if index.exists():
        saved = read_json(index, "the expert recording's index")
        same = saved.get("episodes") == episodes and saved.get("max_steps") == max_steps
        if same and (folder / str(saved.get("session"))).is_dir():
            return folder / saved["session"], saved["recorded"]
    first = training.DEMO_TRAIN_SEEDS_START
    session, recorded = record_expert(folder, range(first, first + episodes), noise=training.DEMO_NOISE,
                                      progress=progress, max_steps=max_steps,
                                      appearance=training.training_looks(training.DEMO_COLOUR_FRACTION))
    write_json(index, {"episodes": episodes, "max_steps": max_steps, "session": Path(session).name,
                       "recorded": recorded})
    return Path(session), recorded


class CarObjective:
    """One trial: learn to drive with the trial's recipe, then drive the tuning tracks; the mean score."""

    def __init__(self, settings: dict, expert, progress: bool = False):
        self.settings, self.expert, self.progress = settings, expert, progress
        self.out = Path(settings["out"])

    def tuning_seeds(self) -> list[int]:
        return list(range(TUNING_SEEDS_START, TUNING_SEEDS_START + self.settings["tracks"]))

    def __call__(self, trial: optuna.Trial) -> float:
        from ..car import training
        from ..car.pilot import Pilot
        from ..car.sim.runs import drive_sim
        from ..util.files import save_or_rescue

        claim_place(trial, self.settings["trials"])
        trial.set_user_attr("worker", worker_id())
        recipe = suggest(trial)
        root = self.out / "sessions" / f"trial-{trial.number:04d}"

        def report(round_index: int, score: float) -> None:
            with INTERRUPT.shielded():  # storage writes: Ctrl-C waits for them
                trial.report(score, round_index)
                trial.set_user_attr("rounds_run", round_index + 1)
                pruned = trial.should_prune()
            if pruned:
                raise optuna.TrialPruned(f"round {round_index} scored {score:.0f} on its DAgger tracks")

        try:
            with INTERRUPT.interruptible():
                model, train_report, _ = training.learn_to_drive(
                    root, episodes=self.settings["episodes"], rounds=recipe["rounds"],
                    dagger_episodes=self.settings["dagger_episodes"], seed=self.settings["seed"],
                    arch=recipe["arch"], epochs=recipe["epochs"], history_lag=recipe["history_lag"],
                    balance=recipe["balance"], hidden=recipe["hidden"], expert=self.expert, on_round=report,
                    progress=self.progress, max_steps=self.settings.get("max_steps"), log=lambda line: None)
                driven = drive_sim(Pilot(model), self.tuning_seeds(), progress=False,
                                   max_steps=self.settings.get("max_steps"))
        finally:
            shutil.rmtree(root, ignore_errors=True)  # the DAgger recordings are not kept
        score = float(driven["mean_score"])
        trial.set_user_attr("tuning_scores", [t["score"] for t in driven["tracks"]])
        trial.set_user_attr("chosen_round", train_report.get("chosen_round"))
        model.metadata["tuning"] = {"study": trial.study.study_name, "trial": trial.number, "params": recipe,
                                    "tuning_tracks": self.tuning_seeds(), "tuning_mean_score": score}
        try:
            best = trial.study.best_value
        except ValueError:
            best = -np.inf
        if score >= best or trial.user_attrs.get("defaults"):
            save_or_rescue(model.save, self.out / "trials" / f"trial-{trial.number:04d}.npz", "trial pilot")
        return score


def _identity(settings: dict) -> dict:
    return {"task": "car", "episodes": settings["episodes"], "dagger_episodes": settings["dagger_episodes"],
            "tracks": settings["tracks"], "seed": settings["seed"], "max_steps": settings.get("max_steps")}


def _open(settings: dict, create: bool = True, worker: int = 0):
    storage = open_storage(settings.get("storage"), settings["out"], heartbeat_s=settings.get("heartbeat_s", 10))
    return open_study(storage, settings["study"], _identity(settings),
                      sampler=optuna.samplers.TPESampler(seed=(settings["seed"] * 1009 + worker) % 2**32,
                                                         constant_liar=True, n_startup_trials=4),
                      pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                      create=create, where=describe(settings.get("storage"), settings["out"]))


def car_worker(settings: dict, index: int, threads: int) -> None:
    """One of ``--workers K`` (a spawned process's entry point): the expert recording is already made."""
    study, _ = _open(settings, create=False, worker=index + 1)
    expert = _expert_recording(Path(settings["out"]), settings["episodes"], settings.get("max_steps"), False)
    end = settings.get("end_time")
    deadline = None if end is None else time.monotonic() + (end - time.time())
    run_trials(study, CarObjective(settings, expert), settings["trials"], deadline=deadline)


def tune_car(settings: dict, *, progress: bool = True, log=print) -> dict:
    """Run the car study ``settings`` describe, then (``evaluate`` > 0) drive the best recipe's pilot and the
    demo recipe's on the evaluation tracks, with the expert on the same tracks."""
    from ..car import training
    from ..util.files import write_json

    settings = {**settings, "episodes": settings.get("episodes") or training.DEMO_EPISODES,
                "dagger_episodes": settings.get("dagger_episodes") or training.DEMO_DAGGER_EPISODES}
    out = Path(settings["out"])
    where = describe(settings.get("storage"), out)
    study, created = _open(settings)
    if created:
        study.enqueue_trial(demo_params(), user_attrs={"defaults": "demo"})
    out.mkdir(parents=True, exist_ok=True)
    log(f"study {settings['study']!r} in {where}: {counts(study)['finished']} of {settings['trials']} trials done; "
        f"each learns from {settings['episodes']} expert tracks + DAgger rounds of {settings['dagger_episodes']} "
        f"and is scored on tuning tracks {TUNING_SEEDS_START}..{TUNING_SEEDS_START + settings['tracks'] - 1}")
    t0 = time.monotonic()
    expert = _expert_recording(out, settings["episodes"], settings.get("max_steps"), progress)
    deadline = t0 + settings["timeout_s"] if settings.get("timeout_s") else None
    shown = Progress(settings["trials"], deadline, enabled=progress, value_format="{:.1f}", step_name="DAgger round")
    if settings.get("workers", 1) > 1:
        from .workers import run_workers

        settings["end_time"] = time.time() + settings["timeout_s"] if settings.get("timeout_s") else None
        last = [counts(study)["finished"]]

        def watch() -> None:
            now = counts(study)["finished"]
            if now != last[0]:
                shown.done_here += now - last[0]
                last[0] = now
                shown.show(study)

        run_workers(car_worker, settings, settings["workers"], watch=watch)
    else:
        run_trials(study, CarObjective(settings, expert), settings["trials"], deadline=deadline, progress=shown)
    c = counts(study)
    result = {"study": settings["study"], "storage": where, "n_trials": c["finished"], "n_pruned": c["pruned"],
              "n_failed": c["failed"], "seconds": time.monotonic() - t0, "tuning_tracks": settings["tracks"]}
    if c["complete"] == 0:
        log("no trial has completed yet: no best recipe (run the command again to continue the study)")
        return result
    best = best_trial(study)
    result.update(best_value=best.value, best_params=best.params, best_trial=best.number)
    best_path = out / "trials" / f"trial-{best.number:04d}.npz"
    if best_path.exists():
        shutil.copyfile(best_path, out / "best.npz")
        result["model"] = str(out / "best.npz")
    defaults = next((t for t in study.trials if t.user_attrs.get("defaults") and t.state.name == "COMPLETE"), None)
    if defaults is not None:
        result.update(demo_trial=defaults.number, demo_tuning_score=defaults.value)
    if settings.get("evaluate") and best_path.exists():
        result["evaluation"] = evaluate(out, best.number, defaults.number if defaults else None,
                                        settings["seed"], settings["evaluate"], settings.get("max_steps"), log)
    from .report import write_report

    report_path = out / "report.html"
    extra = [_evaluation_section(result["evaluation"])] if "evaluation" in result else []
    write_report(study, report_path, {**result, "data": "closed-loop driving"}, space="car recipe",
                 title="Tuning: the car's pilot", value_name="mean score on the tuning tracks", extra_sections=extra,
                 value_format="{:.1f}", step_name="DAgger round")
    result["report"] = str(report_path)
    write_json(out / "tune.json", result)
    log(f"best: trial {best.number}, mean score {best.value:.1f} on the tuning tracks "
        + (f"(the demo recipe: {defaults.value:.1f})" if defaults else "") + f"; report {report_path}")
    return result


def evaluate(out: Path, best: int, demo: int | None, seed: int, n_tracks: int, max_steps, log) -> dict:
    """The best recipe's and the demo recipe's pilots, and the expert, on evaluation tracks seed..seed+N-1."""
    from .. import nn
    from ..car.pilot import Pilot
    from ..car.sim.runs import drive_sim, expert_scores

    seeds = list(range(seed, seed + n_tracks))
    rows = {}
    for name, number in (("best", best), ("demo", demo)):
        if number is None:
            continue
        path = out / "trials" / f"trial-{number:04d}.npz"
        if not path.exists():
            continue
        driven = drive_sim(Pilot(nn.load(path)), seeds, progress=False, max_steps=max_steps)
        rows[name] = {"trial": number, "mean_score": driven["mean_score"], "min_score": driven["min_score"],
                      "laps_completed": driven["laps_completed"], "scores": [t["score"] for t in driven["tracks"]]}
        log(f"evaluation tracks {seeds[0]}..{seeds[-1]}: the {name} recipe (trial {number}) mean score "
            f"{driven['mean_score']:.1f}")
    expert = expert_scores(seeds)
    rows["expert"] = {"mean_score": expert["mean_score"], "scores": [t["score"] for t in expert["tracks"]]}
    return {"seeds": seeds, **rows}


def _evaluation_section(evaluation: dict) -> tuple[str, str, str]:
    from ..report.html import table

    rows = [(name, evaluation[name].get("trial", "–"), f"{evaluation[name]['mean_score']:.1f}",
             ", ".join(f"{s:.0f}" for s in evaluation[name]["scores"]))
            for name in ("best", "demo", "expert") if name in evaluation]
    seeds = evaluation["seeds"]
    return ("evaluation", f"Evaluation tracks {seeds[0]}..{seeds[-1]}",
            table(["pilot", "trial", "mean score", "per track"], rows) +
            '<p class="muted">tracks no trial learned or was scored on; driven once, at the end</p>')
