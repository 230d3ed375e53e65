"""Running ``tune digits``: one process or K workers on one study, then the best model, report and JSON.

The settings travel as a plain dict (what a spawned worker receives); every worker opens the storage and
the study itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..digits import models
from . import spaces
from .digits import DigitsObjective, best_model, enqueue_defaults, load_split, remove_other_models
from .storage import describe, open_storage
from .study import Progress, best_trial, counts, make_pruner, make_sampler, open_study, run_trials, worker_id


def identity(settings: dict, split) -> dict:
    """What a study of this command must share with the command continuing it."""
    return {"task": "digits", "space": settings["space"], **split.identity(), "split_seed": settings["seed"],
            "max_epochs": settings["epochs"]}


def _split(settings: dict):
    return load_split(settings["data"], settings["seed"], settings.get("train_size"), settings.get("val_size"),
                      settings.get("test_size"))


def _open(settings: dict, split, worker: int = 0, create: bool = True):
    storage = open_storage(settings.get("storage"), settings["out"], heartbeat_s=settings.get("heartbeat_s", 10))
    return open_study(storage, settings["study"], identity(settings, split),
                      sampler=make_sampler(settings["seed"], worker, settings.get("sampler", "tpe")),
                      pruner=make_pruner(settings.get("pruner", "hyperband"), settings["epochs"]),
                      create=create, where=describe(settings.get("storage"), settings["out"]))


def _objective(settings: dict, split, threads: int | None) -> DigitsObjective:
    return DigitsObjective(split, settings["space"], settings["epochs"], settings["trials"], settings["out"],
                           seed=settings["seed"], deadline=settings.get("deadline"), threads=threads,
                           worker=worker_id())


def worker(settings: dict, index: int, threads: int) -> None:
    """One of ``--workers K``: run trials until the study is done (a spawned process's entry point)."""
    from .. import nn

    split = _split(settings)
    study, _ = _open(settings, split, worker=index + 1, create=False)
    settings = {**settings, "deadline": _local_deadline(settings)}
    with nn.blas_threads(threads):
        run_trials(study, _objective(settings, split, threads), settings["trials"], deadline=settings["deadline"])


def _local_deadline(settings: dict) -> float | None:
    """The wall-clock end (``end_time``, shared between processes) as this process's monotonic clock."""
    end = settings.get("end_time")
    return None if end is None else time.monotonic() + (end - time.time())


def tune(settings: dict, *, progress: bool = True, log=print) -> dict:
    """Run the study ``settings`` describe (see ``scratchpilot tune digits --help``) and finish it: the best
    model tested once, the report, the figures. Returns the result document."""
    from ..util.files import save_or_rescue, write_json

    out = Path(settings["out"])
    split = _split(settings)
    study, created = _open(settings, split)  # refuses a storage or study it cannot use before writing anything
    out.mkdir(parents=True, exist_ok=True)
    if created:
        enqueue_defaults(study, settings["space"])
    where = describe(settings.get("storage"), out)
    c = counts(study)
    log(f"study {settings['study']!r} in {where}: {c['finished']} of {settings['trials']} trials done; "
        f"{settings['space']} space, up to {settings['epochs']} epochs a trial, {split.name}: "
        f"{len(split.y_train):,d} training / {len(split.y_val):,d} validation images")
    t0 = time.monotonic()
    settings = {**settings}
    if settings.get("timeout_s"):
        settings["end_time"] = time.time() + settings["timeout_s"]
    deadline = _local_deadline(settings)
    settings["deadline"] = deadline
    shown = Progress(settings["trials"], deadline, enabled=progress)
    workers = settings.get("workers", 1)
    if workers > 1:
        from .workers import run_workers

        last = [c["finished"]]

        def watch() -> None:
            now = counts(study)
            if now["finished"] != last[0]:
                shown.done_here += now["finished"] - last[0]
                last[0] = now["finished"]
                shown.show(study)

        codes = run_workers(worker, {k: v for k, v in settings.items() if k != "deadline"}, workers, watch=watch,
                            threads=settings.get("threads"))
        if any(code not in (0, None) for code in codes):
            log(f"warning: worker exit codes {codes}: a worker failed; its running trial is retried by the others "
                f"or by the next run")
    else:
        run_trials(study, _objective(settings, split, settings.get("threads")), settings["trials"],
                   deadline=deadline, progress=shown)
    seconds = time.monotonic() - t0
    c = counts(study)
    result = {"study": settings["study"], "storage": where, "space": settings["space"], "data": split.name,
              "n_trials": c["finished"], "n_complete": c["complete"], "n_pruned": c["pruned"],
              "n_failed": c["failed"], "target_trials": settings["trials"], "workers": workers,
              "seconds": seconds, "epochs_spent": epochs_spent(study), "pruner": settings.get("pruner", "hyperband"),
              "sampler": settings.get("sampler", "tpe")}
    if c["complete"] == 0:
        log("no trial has completed yet: no best model (run the command again to continue the study)")
        write_json(out / "tune.json", result)
        return result
    model, tested = best_model(study, split, settings["space"], settings["epochs"], out, seed=settings["seed"],
                               storage_text=where, threads=settings.get("threads"), progress=progress)
    models.attach_profile(model, split.X_train, held_out=(split.X_val, f"{split.name} validation"), source=split.name)
    model_path = save_or_rescue(model.save, Path(settings.get("model") or out / "best.npz"), "best model")
    remove_other_models(study, out)
    best = best_trial(study)
    result.update(best_value=best.value, best_params=best.params, best_trial=best.number, model=str(model_path),
                  **tested)
    report_path = out / "report.html"
    from .report import write_report

    write_report(study, report_path, result, space=settings["space"])
    result["report"] = str(report_path)
    write_json(out / "tune.json", result)
    log(f"best: trial {best.number}, validation {best.value:.2%}; {split.test_name}: {tested['test_accuracy']:.2%} "
        f"(95% CI {tested['test_ci95'][0]:.2%}–{tested['test_ci95'][1]:.2%})\n"
        f"model {model_path}, report {report_path}")
    return result


def epochs_spent(study) -> int:
    """Epochs trained over every finished trial of the study (what the pruner saves)."""
    from .study import FINISHED

    return int(sum(t.user_attrs.get("epochs", 0) for t in study.get_trials(deepcopy=False, states=FINISHED)))


def default_study_name(space: str) -> str:
    return f"digits-{spaces.check_space(space)}"
