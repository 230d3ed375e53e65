"""``scratchpilot tune digits|car`` and ``scratchpilot automl digits``: hyper-parameter search on Optuna.

Only argparse and the standard library are imported here; Optuna and the engine load in the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import options
from ..errors import CommandError
from ..util.files import write_json_result

DATA_HELP = ("dataset: mnist, fashion, or a labelled Kaggle CSV / IDX file (mnist and fashion are tested on "
             "their own test sets; a file on a held-out 1/7 of it)")


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--trials", type=options.positive_int, default=20,
                   help="finished trials the study should hold, counting earlier runs and every worker (default 20)")
    p.add_argument("--timeout", type=options.duration, metavar="DURATION",
                   help="stop after this long (e.g. 90s, 20m, 1h): a running trial stops at its last epoch "
                        "that fits, and no trial starts that cannot finish an epoch")
    p.add_argument("--study", help="study name; the same name continues a study (default: the task and space)")
    p.add_argument("--storage", metavar="URL",
                   help="a database Optuna shares between machines, e.g. postgresql://USER@HOST/DB or "
                        "sqlite:///study.db (default: the journal file study.journal in --out, safe for several "
                        "processes on one machine)")
    p.add_argument("--workers", type=options.positive_int, default=1,
                   help="worker processes on this machine, each with its share of the cores for BLAS (default 1)")
    p.add_argument("--seed", type=options.seed, default=0,
                   help="seeds the sampler, the validation split and the training (default 0)")
    p.add_argument("--out", type=options.output_folder, default=default_out,
                   help=f"folder for the journal, the best model and the report (default {default_out})")
    p.add_argument("--heartbeat", type=options.positive_number, default=10, metavar="SECONDS",
                   help="seconds between a running trial's heartbeats; a trial silent for three of them is "
                        "failed and run again (default 10)")
    p.add_argument("--json", type=options.json_file, metavar="PATH",
                   help="write n_trials, best_value, best_params and the model's path as JSON")


def _digits_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist", help=DATA_HELP + " (default mnist)")
    p.add_argument("--train-size", type=options.positive_int, metavar="N",
                   help="train on only N images of the training split (quick studies)")
    p.add_argument("--val-size", type=options.positive_int, metavar="N",
                   help="validation images held out of the training set (default 10,000, at most 1/6)")
    p.add_argument("--test-size", type=options.positive_int, metavar="N", help=argparse.SUPPRESS)


def add_parser(subparsers) -> None:
    tune = subparsers.add_parser("tune", help="hyper-parameter search (Optuna), on one machine or many",
                                 description="Search the training settings with Optuna: TPE sampling, Hyperband "
                                             "pruning, a study shared through a journal file or a database.")
    sub = tune.add_subparsers(dest="tune_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("digits", help="tune a digits network on validation accuracy",
                       description="Each trial trains on the training split and reports its validation accuracy "
                                   "after every epoch; Hyperband stops hopeless trials. The best model is tested "
                                   "once, at the end.")
    _digits_data(p)
    p.add_argument("--space", default="mlp", help="mlp, cnn, or all (the family is a parameter too); default mlp")
    p.add_argument("--epochs", type=options.positive_int,
                   help="epochs a trial may run (default: mlp 8, cnn 3, all 6)")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random"],
                   help="tpe (default: Optuna's Tree-structured Parzen Estimator) or random search")
    p.add_argument("--threads", type=options.positive_int, metavar="N",
                   help="BLAS threads of each worker (default: one worker times its batches to choose; several "
                        "share the cores equally)")
    p.add_argument("--pruner", default="hyperband", choices=["hyperband", "median", "none"],
                   help="hyperband (default: the best with TPE in Optuna's benchmarks), median, or none")
    _common(p, "runs/tune-digits")
    p.set_defaults(func=cmd_tune_digits)

    p = sub.add_parser("car", help="tune the pilot's training by closed-loop driving on training tracks",
                       description="Each trial learns to drive (expert recording, DAgger rounds) with its "
                                   "settings and is scored by driving tuning tracks, never the evaluation tracks.")
    p.add_argument("--tracks", type=options.positive_int, default=4,
                   help="tuning tracks each trial's pilot drives for its score (default 4)")
    p.add_argument("--evaluate", type=options.positive_int, default=0, metavar="N",
                   help="at the end, drive the best settings' pilot on N evaluation tracks (seeds from --seed)")
    p.add_argument("--max-steps", type=options.positive_int, help=argparse.SUPPRESS)
    p.add_argument("--episodes", type=options.positive_int, help="expert episodes recorded (default: the demo's)")
    p.add_argument("--dagger-episodes", type=options.positive_int,
                   help="episodes per DAgger round (default: the demo's)")
    _common(p, "runs/tune-car")
    p.set_defaults(func=cmd_tune_car, trials=8)

    automl = subparsers.add_parser("automl", help="choose the model family and its settings within a time budget")
    sub = automl.add_subparsers(dest="automl_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("digits", help="AutoML for digits: MLP or CNN, augmentation and hyper-parameters",
                       description="A short search per family, more trials for the better one, the winner "
                                   "retrained on training + validation and tested once; all within the budget.")
    _digits_data(p)
    p.add_argument("--budget", type=options.duration, required=True, metavar="DURATION",
                   help="wall-clock budget for the whole run, e.g. 30m (kept within ±5 %%)")
    p.add_argument("--seed", type=options.seed, default=0)
    p.add_argument("--out", type=options.output_folder, default="runs/automl-digits")
    p.add_argument("--storage", metavar="URL", help="a database for the studies (default: journal files in --out)")
    p.add_argument("--json", type=options.json_file, metavar="PATH",
                   help="write the candidates, the winner and its test accuracy as JSON")
    p.set_defaults(func=cmd_automl_digits)


def _run(task, settings: dict, args: argparse.Namespace) -> int:
    """Check the storage URL, run ``task(settings)``, write ``--json``; a refused input (a bad storage, a
    study of another space, a budget too short: each a ValueError naming it) exits 2 with its message."""
    if settings.get("storage") is not None:
        from .storage import check_url

        try:
            check_url(settings["storage"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    try:
        result = task(settings)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    write_json_result(args.json, result)
    return 0


def cmd_tune_digits(args: argparse.Namespace) -> int:
    from . import spaces
    from .run_digits import default_study_name, tune

    if args.space not in spaces.SPACES:
        raise CommandError(f"--space {args.space!r}: unknown search space; use one of {', '.join(spaces.SPACES)}")
    return _run(tune, {"data": args.data, "space": args.space, "trials": args.trials, "timeout_s": args.timeout,
                       "study": args.study or default_study_name(args.space), "storage": args.storage,
                       "workers": args.workers, "seed": args.seed, "out": str(Path(args.out)),
                       "epochs": args.epochs or spaces.DEFAULT_EPOCHS[args.space], "train_size": args.train_size,
                       "val_size": args.val_size, "test_size": args.test_size, "pruner": args.pruner,
                       "threads": args.threads, "sampler": args.sampler, "heartbeat_s": args.heartbeat}, args)


def cmd_tune_car(args: argparse.Namespace) -> int:
    from .car import tune_car

    return _run(tune_car, {"trials": args.trials, "timeout_s": args.timeout, "study": args.study or "car",
                           "storage": args.storage, "workers": args.workers, "seed": args.seed,
                           "out": str(Path(args.out)), "tracks": args.tracks, "evaluate": args.evaluate,
                           "max_steps": args.max_steps, "episodes": args.episodes,
                           "dagger_episodes": args.dagger_episodes, "heartbeat_s": args.heartbeat}, args)


def cmd_automl_digits(args: argparse.Namespace) -> int:
    from .automl import automl

    return _run(automl, {"data": args.data, "budget_s": args.budget, "seed": args.seed, "out": str(Path(args.out)),
                         "storage": args.storage, "train_size": args.train_size, "val_size": args.val_size,
                         "test_size": args.test_size}, args)
