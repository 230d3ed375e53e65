"""``automl digits --budget 30m``: choose the family (MLP or CNN), the augmentation and the hyper-parameters
within a wall-clock budget, retrain the winner on training + validation, test it once, and assess it.

How the budget is spent:

1. *Calibrate* (a few seconds): time training batches of each family's hand-set default, to know what an
   epoch costs during the search and at the final retraining.
2. *Reserve* the end: retraining the winner and the hand-set default of its family on training +
   validation, and testing both. A family whose one trial and reserve do not fit is left out; a budget that
   fits no family is refused before anything is written.
3. *Explore*: an equal share of half the search time per family (its defaults first, then TPE + Hyperband).
4. *Exploit*: the rest of the search time for the family with the better validation accuracy.
5. *Select*: its best trial, unless the gain over its defaults is within one standard error
   (:func:`select_winner`).
6. *Retrain and assess*: the winner and the default of its family, same epochs, on training + validation;
   the test set is read once by each, at the very end.

The search trains on a subset of the training split (a lower-fidelity search, as multi-fidelity AutoML
does), the retraining on all of it; trials that would run past a phase's end stop at their last epoch
that fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..digits import models
from . import spaces
from .digits import DigitsObjective, enqueue_defaults, load_split
from .storage import describe, open_storage
from .study import (
    FINISHED,
    Progress,
    best_trial,
    format_seconds,
    make_pruner,
    make_sampler,
    open_study,
    run_trials,
    worker_id,
)

#: training images a search trial sees (all of them at the final retraining)
SEARCH_IMAGES = 20_000
#: epochs a trial may run, per family
EPOCHS = {"mlp": 8, "cnn": 3}
#: the share of the search time spent exploring both families before the better one gets the rest
EXPLORE_SHARE = 0.5
#: safety margin on the final retraining's estimate, and the slack kept at the very end
RESERVE_MARGIN = 1.15
MEASURED_MARGIN = 1.05
END_SLACK_S = 3.0


class BudgetError(ValueError):
    """The budget is too short for what it must hold; nothing was written."""


@dataclass
class Calibration:
    """Seconds per training image of each family's default (from a few timed batches)."""

    seconds_per_image: dict[str, float]

    def epoch_s(self, family: str, images: int) -> float:
        return self.seconds_per_image[family] * images


def calibrate(split, families=spaces.FAMILIES, threads="auto") -> Calibration:
    """Time one short epoch of each family's default on a slice of the training images (the first epoch of
    a process is slower: one warm-up epoch is not timed)."""
    per_image = {}
    for family in families:
        config = models.BEST if family == "mlp" else models.CNN
        n = 2048 if family == "mlp" else 384
        X, y = split.X_train[:n], split.y_train[:n]
        models.train(config, X[: n // 4], y[: n // 4], epochs=1, progress=False, threads=threads)  # warm-up
        t0 = time.perf_counter()
        models.train(config, X, y, epochs=1, progress=False, threads=threads)
        per_image[family] = (time.perf_counter() - t0) / n
    return Calibration(per_image)


def final_reserve(calibration: Calibration, family: str, n_final: int) -> float:
    """Seconds to retrain the winner and the family's default on ``n_final`` images, and test both."""
    return 2 * EPOCHS[family] * calibration.epoch_s(family, n_final) * RESERVE_MARGIN + 10.0


def measured_reserve(study, family: str, n_search: int, n_final: int, fallback: float) -> float:
    """:func:`final_reserve` from the epochs the family's trials actually took (the median), scaled from the
    search images to the final ones; ``fallback`` when no trial reported its epoch time."""
    seconds = [t.user_attrs["epoch_seconds"] for t in study.get_trials(deepcopy=False)
               if "epoch_seconds" in t.user_attrs]
    if not seconds:
        return fallback
    return 2 * EPOCHS[family] * float(np.median(seconds)) * n_final / n_search * MEASURED_MARGIN + 2.0


def automl(settings: dict, *, progress: bool = True, log=print) -> dict:
    """Run AutoML as ``settings`` say (see ``scratchpilot automl digits --help``); returns the result."""
    from ..util.files import save_or_rescue, write_json

    started = time.monotonic()
    end = started + settings["budget_s"]
    out = Path(settings["out"])
    split = load_split(settings["data"], settings["seed"], settings.get("train_size"), settings.get("val_size"),
                       settings.get("test_size"))
    n_search = min(SEARCH_IMAGES, len(split.y_train))
    n_final = len(split.y_train) + len(split.y_val)
    search_split = _subset(split, n_search)
    calibration = calibrate(split)
    plan = {f: {"trial_s": EPOCHS[f] * calibration.epoch_s(f, n_search),
                "reserve_s": final_reserve(calibration, f, n_final)} for f in spaces.FAMILIES}
    left = end - time.monotonic()
    families = [f for f in spaces.FAMILIES if plan[f]["trial_s"] + plan[f]["reserve_s"] + END_SLACK_S <= left]
    if not families:
        need = min(plan[f]["trial_s"] + plan[f]["reserve_s"] for f in spaces.FAMILIES) + END_SLACK_S
        raise BudgetError(f"--budget {format_seconds(settings['budget_s'])} is under one trial: one MLP trial on "
                          f"{n_search:,d} images and the final retraining on {n_final:,d} need about "
                          f"{format_seconds(need)} here")
    skipped = [f for f in spaces.FAMILIES if f not in families]
    log(f"automl: {format_seconds(settings['budget_s'])} budget; an epoch costs "
        + ", ".join(f"{f} {calibration.epoch_s(f, n_search):.1f} s" for f in spaces.FAMILIES)
        + f" on {n_search:,d} search images"
        + (f"; left out for lack of time: {', '.join(skipped)}" if skipped else ""))
    storage = open_storage(settings.get("storage"), out)
    out.mkdir(parents=True, exist_ok=True)
    studies = {}
    for family in families:
        identity = {"task": "digits-automl", "space": family, **search_split.identity(), "split_seed": settings["seed"],
                    "max_epochs": EPOCHS[family]}
        study, created = open_study(storage, f"automl-{family}", identity, sampler=make_sampler(settings["seed"]),
                                    pruner=make_pruner("hyperband", EPOCHS[family]),
                                    where=describe(settings.get("storage"), out))
        if created:
            enqueue_defaults(study, family)
        studies[family] = study
    reserve = max(plan[f]["reserve_s"] for f in families)
    search_end = end - reserve - END_SLACK_S
    explore = EXPLORE_SHARE * (search_end - time.monotonic()) / len(families)
    phases = []
    for family in families:
        phase_end = min(search_end, time.monotonic() + max(explore, plan[family]["trial_s"]))
        phases.append(_search(studies[family], family, search_split, settings, out, phase_end, "explore", progress,
                              log))
    leader = max(families, key=lambda f: _best_value(studies[f]))
    # only the leader's retraining is left to pay for, now priced by its trials' own epochs
    search_end = end - measured_reserve(studies[leader], leader, n_search, n_final, plan[leader]["reserve_s"]) \
        - END_SLACK_S
    phases.append(_search(studies[leader], leader, search_split, settings, out, search_end, "exploit", progress, log))
    if not np.isfinite(_best_value(studies[leader])):
        raise BudgetError(f"no trial completed within --budget {format_seconds(settings['budget_s'])}: give it more "
                          f"time (the studies in {out} are kept and continue next time)")
    winner_trial, selection = select_winner(studies[leader], len(search_split.y_val))
    log(f"    {selection}")
    log(f"winner: {leader}, trial {winner_trial.number} (validation {winner_trial.value:.2%}); retraining it and "
        f"the {leader} defaults on {n_final:,d} images, {format_seconds(max(0, end - time.monotonic()))} left")
    final = _retrain_and_test(split, leader, winner_trial, settings["seed"], end, progress)
    model = final.pop("model")
    model.metadata["automl"] = {"study": studies[leader].study_name, "family": leader, "trial": winner_trial.number,
                                "params": winner_trial.params, "validation_accuracy": winner_trial.value,
                                "budget_s": settings["budget_s"]}
    model.metadata["tuning"] = {"study": studies[leader].study_name, "storage": describe(settings.get("storage"), out),
                                "trial": winner_trial.number, "params": winner_trial.params, "space": leader}
    # retrained on training + validation: its answers on the test set (already read once) are the held-out ones
    models.attach_profile(model, split.X_train, held_out=(split.X_test, split.test_name), source=split.name)
    model_path = save_or_rescue(model.save, out / "best.npz", "AutoML model")
    seconds = time.monotonic() - started
    candidates = _candidates(studies)
    result = {"budget_s": settings["budget_s"], "seconds": seconds, "budget_kept": seconds / settings["budget_s"],
              "families": families, "skipped_families": skipped, "winner_family": leader,
              "best_trial": winner_trial.number, "best_value": winner_trial.value, "best_params": winner_trial.params,
              "selection": selection, "search_best_trial": best_trial(studies[leader]).number,
              "n_trials": sum(p["trials"] for p in phases), "phases": phases, "candidates": candidates[:20],
              "calibration_s_per_epoch": {f: calibration.epoch_s(f, n_search) for f in spaces.FAMILIES},
              "n_search_images": n_search, "n_final_images": n_final, "data": split.name,
              "study": studies[leader].study_name, "storage": describe(settings.get("storage"), out),
              "model": str(model_path), "pruner": "hyperband", **final}
    from .assessment import assessment_section
    from .report import write_report

    report_path = out / "report.html"
    write_report(studies[leader], report_path, result, space=leader, title="AutoML: digits",
                 extra_sections=[assessment_section(result)])
    result["report"] = str(report_path)
    result["seconds"] = time.monotonic() - started  # the whole run, the report included
    result["budget_kept"] = result["seconds"] / settings["budget_s"]
    write_json(out / "automl.json", result)
    log(f"{split.test_name}: the AutoML {leader} {final['test_accuracy']:.2%} "
        f"(95% CI {final['test_ci95'][0]:.2%}–{final['test_ci95'][1]:.2%}), the {leader} defaults "
        f"{final['default_test_accuracy']:.2%}; {format_seconds(result['seconds'])} of "
        f"{format_seconds(settings['budget_s'])}"
        f"\nmodel {model_path}, report {report_path}")
    return result


def select_winner(study, n_val: int):
    """The study's best trial, unless its validation gain over the family's defaults is within one standard
    error of the difference (two binomial proportions on ``n_val`` images): the best of many noisy
    estimates is flattered by its luck (the winner's curse), and a gain that small does not carry over
    to the test set reliably. Returns ``(trial, the reason in words)``."""
    best = best_trial(study)
    defaults = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("defaults")
                     and t.state.name == "COMPLETE"), None)
    if defaults is None or defaults.number == best.number:
        return best, f"trial {best.number} has the best validation accuracy ({best.value:.2%})"
    p1, p0 = best.value, defaults.value
    se = float(np.sqrt(p1 * (1 - p1) / n_val + p0 * (1 - p0) / n_val))
    gain = p1 - p0
    if gain < se:
        return defaults, (f"the defaults kept: the best trial ({best.number}, {p1:.2%}) is only {gain * 100:.2f} "
                          f"points above them ({p0:.2%}), within one standard error ({se * 100:.2f} points)")
    return best, (f"trial {best.number} ({p1:.2%}) is {gain * 100:.2f} points above the defaults ({p0:.2%}), more "
                  f"than one standard error ({se * 100:.2f} points)")


def _subset(split, n: int):
    from dataclasses import replace

    return replace(split, X_train=split.X_train[:n], y_train=split.y_train[:n])


def _best_value(study) -> float:
    try:
        return study.best_value
    except ValueError:
        return -np.inf


def _search(study, family: str, split, settings: dict, out: Path, phase_end: float, phase: str, progress: bool,
            log) -> dict:
    """Trials of ``family`` until ``phase_end`` (a monotonic time); the figures of the phase."""
    seen = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    t0 = time.monotonic()
    objective = DigitsObjective(split, family, EPOCHS[family], 10**6, out / family, seed=settings["seed"],
                                deadline=phase_end, worker=worker_id())
    if progress:
        log(f"{phase} {family}: {format_seconds(max(0, phase_end - t0))}")
    shown = Progress(None, phase_end, enabled=progress)
    run_trials(study, objective, 10**6, deadline=phase_end, progress=shown)
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.number not in seen]
    result = {"phase": phase, "family": family, "seconds": time.monotonic() - t0, "trials": len(trials),
              "pruned": sum(t.state.name == "PRUNED" for t in trials), "best_value": _best_value(study)}
    if progress:
        log(f"    {result['trials']} trials ({result['pruned']} pruned) in {format_seconds(result['seconds'])}, "
            f"best {family} validation {result['best_value']:.2%}")
    return result


def _retrain_and_test(split, family: str, trial, seed: int, end: float, progress: bool) -> dict:
    """The winner and the family's hand-set default, trained with the same epochs on training + validation,
    then each tested once."""
    from ..data import to_features
    from ..digits.metrics import wilson_interval

    X = np.concatenate([split.X_train, split.X_val])
    y = np.concatenate([split.y_train, split.y_val])
    epochs = EPOCHS[family]
    tuned = spaces.config_from_params(trial.params, family, epochs, name=f"automl-{family}-trial-{trial.number}")
    default = spaces.config_from_params(spaces.default_params(family), family, epochs, name=f"{family}-defaults")
    features = to_features(split.X_test)
    n = len(split.y_test)
    out = {}
    for key, config in (("", tuned), ("default_", default)):
        t0 = time.monotonic()
        if key and trial.params == spaces.default_params(family):
            # the winner is the defaults' trial: the same config and seed train the same model
            out.update({"default_test_accuracy": out["test_accuracy"], "default_test_ci95": out["test_ci95"],
                        "default_train_seconds": 0.0, "winner_is_default": True})
            continue
        model = models.train(config, X, y, seed=seed, progress=progress)  # its own bar, epoch by epoch
        accuracy = float(model.evaluate(features, split.y_test)["accuracy"])
        low, high = wilson_interval(int(round(accuracy * n)), n)
        out.update({f"{key}test_accuracy": accuracy, f"{key}test_ci95": [low, high],
                    f"{key}train_seconds": time.monotonic() - t0})
        if key == "":
            model.metadata.update(dataset=split.name, test_accuracy=accuracy, test_dataset=split.test_name)
            out["model"] = model
    out.setdefault("winner_is_default", False)
    out.update(test_dataset=split.test_name, n_test=n, epochs=epochs, default_config=spaces.default_params(family))
    return out


def _candidates(studies: dict) -> list[dict]:
    """Every complete trial of every family, best first."""
    rows = []
    for family, study in studies.items():
        for t in study.get_trials(deepcopy=False):
            if t.state.name == "COMPLETE":
                rows.append({"family": family, "trial": t.number, "value": t.value, "params": t.params,
                             "defaults": bool(t.user_attrs.get("defaults")), "epochs": t.user_attrs.get("epochs")})
    return sorted(rows, key=lambda r: -r["value"])
