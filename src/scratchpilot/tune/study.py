"""The study and the worker loop every tuning command shares: open or continue a study, run trials until the
study holds its target count, wait for other workers' last trials, report progress.

A study's target is a count of *finished* trials (complete or pruned) in the whole study, whoever ran them:
running the same command again continues it, and several workers on one storage share it. Each trial
claims a place by its number, which the storage hands out atomically: a trial whose number would make the
count pass the target is surplus and ends at once (marked ``surplus``), so workers racing for the last place
never run one trial too many. A trial whose worker died is failed by Optuna's heartbeat check and queued
again with the same parameters (:mod:`.storage`); a worker finding the target reached while another
worker's trial still runs waits for it, taking over its retry if that worker is gone.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ..util.text import format_seconds
from .interrupt import INTERRUPT

# the heartbeat retry, multivariate TPE and the matplotlib plots are marked experimental by Optuna; they
# are the documented way to do what they do, and the warning would print once per worker and trial
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: states that hold a place towards the target
PLACED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
PRUNERS = ("hyperband", "median", "none")


class TuneError(ValueError):
    """A study that cannot be used as asked; the message says which study, and why."""


class Surplus(Exception):
    """The trial's place is beyond the study's target: another worker took the last one first."""


class OutOfTime(Exception):
    """Too little time is left to start the trial (it is marked ``surplus`` and ``unstarted``)."""


def make_pruner(name: str, max_epochs: int):
    """Hyperband by default: Optuna's benchmarks found it the best pruner for its TPE sampler (Optuna's
    documentation, "Which sampler and pruner should be used?"), and with epochs as its resource it
    stops most trials after one or three epochs while letting some of every bracket run long;
    "median" (stop a trial below the median of earlier trials at the same epoch) suits random search."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"unknown pruner {name!r}; use one of {', '.join(PRUNERS)}")


SAMPLERS = ("tpe", "random")


def make_sampler(seed: int, worker: int = 0, kind: str = "tpe"):
    """TPE, seeded per worker (two workers with one seed would draw the same first trials), with the
    "constant liar" that keeps parallel workers from sampling next to each other's running trials; or
    random search, whose trials do not depend on earlier ones (a pruner's cost is then measured on the
    very same trials with and without it)."""
    worker_seed = (seed * 1009 + worker) % 2**32
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=worker_seed)
    if kind != "tpe":
        raise TuneError(f"unknown sampler {kind!r}; use one of {', '.join(SAMPLERS)}")
    return optuna.samplers.TPESampler(seed=worker_seed, constant_liar=True, n_startup_trials=5, multivariate=True)


def open_study(storage, name: str, identity: dict, *, sampler=None, pruner=None, create: bool = True,
               where: str = "") -> tuple[optuna.Study, bool]:
    """Load study ``name`` from ``storage``, or create it (``create``); returns ``(study, created)``.

    ``identity`` (task, search space, data, ...) is stored with a new study; a study found with another
    identity is refused before anything is written, naming the field: trials only compare on one space and
    one split."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this package prints its own progress
    created = False
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        if not create:
            raise TuneError(f"no study {name!r} in {where or 'the storage'}") from None
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                        pruner=pruner)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuneError(f"study {name!r} in {where or 'the storage'} minimises its value; this command maximises "
                        f"accuracy or score: give another --study name")
    found = study.user_attrs
    if not found and not study.get_trials(deepcopy=False):
        for key, value in identity.items():  # new (or created a moment ago by another worker): same values
            study.set_user_attr(key, value)
        return study, created
    for key, value in identity.items():
        if key not in found:
            raise TuneError(f"study {name!r} in {where or 'the storage'} was not made by this command (it has no "
                            f"{key!r}); give another --study name")
        if found[key] != value:
            raise TuneError(f"study {name!r} in {where or 'the storage'} was created with {key} {found[key]!r}, "
                            f"not {value!r}; give another --study name (or the study's own {key})")
    return study, created


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials of the study by state (surplus trials apart from failed ones)."""
    out = {"complete": 0, "pruned": 0, "running": 0, "waiting": 0, "failed": 0, "surplus": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and t.user_attrs.get("surplus"):
            out["surplus"] += 1
        else:
            key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
                   TrialState.WAITING: "waiting"}.get(t.state, "failed")
            out[key] += 1
    out["finished"] = out["complete"] + out["pruned"]
    return out


def best_trial(study: optuna.Study):
    """The complete trial with the highest value, the earliest of equal ones. Not ``study.best_trial``: a
    database storage returns any of several tied trials, so two workers could name different ones (and
    retrain a model neither kept). Raises ``ValueError`` when no trial is complete."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no complete trial")
    return max(complete, key=lambda t: (t.value, -t.number))


def claim_place(trial: optuna.Trial, target: int) -> None:
    """Raise :class:`Surplus` when ``trial``'s number puts it past the study's ``target``: its place is the
    count of trials holding a place (finished, running, queued) numbered up to its own."""
    placed = [t for t in trial.study.get_trials(deepcopy=False, states=PLACED) if t.number <= trial.number]
    if len(placed) > target:
        trial.set_user_attr("surplus", True)
        raise Surplus(f"trial {trial.number}: the study already has {target} trials")


@dataclass
class Progress:
    """One line per finished trial: trials done, best so far, time left."""

    target: int | None  #: None: no count, only a time limit
    deadline: float | None
    enabled: bool = True
    value_format: str = "{:.2%}"  #: how a trial's value reads ("{:.1f}" for a driving score)
    step_name: str = "epoch"  #: what the pruner's steps are
    started: float = 0.0
    done_here: int = 0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def line(self, study: optuna.Study, note: str = "") -> str:
        c = counts(study)
        try:
            best = best_trial(study)
            best_text = f"best {self.value_format.format(best.value)} (trial {best.number})"
        except ValueError:
            best_text = "no trial complete yet"
        left = self.time_left(c)
        of = f"/{self.target}" if self.target is not None else ""
        return (f"{note}{c['finished']}{of} trials done ({c['pruned']} pruned"
                + (f", {c['failed']} failed" if c["failed"] else "") + f"), {best_text}"
                + (f", {left} left" if left else ""))

    def time_left(self, c: dict) -> str:
        elapsed = time.monotonic() - self.started
        remaining = max(0, self.target - c["finished"]) if self.target is not None else math.inf
        estimate = elapsed / self.done_here * remaining if self.done_here and self.target is not None else math.inf
        if self.deadline is not None:
            estimate = min(estimate, max(0.0, self.deadline - time.monotonic()))
        return format_seconds(estimate) if math.isfinite(estimate) else ""

    def show(self, study: optuna.Study, note: str = "") -> None:
        if self.enabled:
            print(self.line(study, note), flush=True)


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], target: int, *,
               deadline: float | None = None, progress: Progress | None = None, poll_s: float = 1.0) -> int:
    """Run trials of ``objective`` in this process until the study has ``target`` finished trials or the
    ``deadline`` (a ``time.monotonic()`` value) passes. Returns the number of trials this process finished.

    Each trial goes through ``study.optimize(n_trials=1)``, so Optuna's heartbeat thread and its check for
    stale trials run as usual. The objective must call :func:`claim_place` first. Ctrl-C is deferred to a
    safe point (:mod:`.interrupt`).
    """
    with INTERRUPT.installed():
        return _run_trials(study, objective, target, deadline, progress, poll_s)


def _run_trials(study, objective, target, deadline, progress, poll_s) -> int:
    finished_here = 0
    while deadline is None or time.monotonic() < deadline:
        INTERRUPT.check()
        c = counts(study)
        if c["finished"] >= target:
            break
        if c["finished"] + c["running"] + c["waiting"] >= target and c["waiting"] == 0:
            # every place is taken by a running trial: wait for it, and fail it if its worker is gone
            optuna.storages.fail_stale_trials(study)
            time.sleep(poll_s)
            continue
        ended: list = []
        try:
            study.optimize(objective, n_trials=1, catch=(Surplus, OutOfTime), gc_after_trial=False,
                           callbacks=[lambda _study, frozen, ended=ended: ended.append(frozen)])
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            if isinstance(exc, ValueError) and not str(exc).startswith("Cannot tell a"):
                raise
            # this worker was silent for too long (a stalled machine) and another failed its trial as stale;
            # that trial is queued again, so this result is dropped and the worker goes on
            print("a trial of this worker was failed as stale by another worker; it runs again",
                  file=sys.stderr, flush=True)
            continue
        if any(t.user_attrs.get("unstarted") for t in ended):
            break  # the time left is shorter than an epoch
        for t in ended:
            if t.state in FINISHED:
                finished_here += 1
                if progress is not None:
                    progress.done_here += 1
                    last = max(t.intermediate_values, default=None)
                    verb = (f"pruned after {progress.step_name} {last}" if t.state == TrialState.PRUNED
                            else progress.value_format.format(t.value))
                    progress.show(study, f"trial {t.number} {verb} · ")
            elif t.state == TrialState.FAIL and not t.user_attrs.get("surplus"):
                print(f"trial {t.number} failed: {t.system_attrs.get('fail_reason', 'see the message above')}",
                      file=sys.stderr, flush=True)
    return finished_here


def worker_id() -> str:
    """This process's name in the trials it runs: host and process id."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
