"""``scratchpilot car train`` and ``car check``: train a pilot on sessions; check it on sessions."""

from __future__ import annotations

import argparse

import numpy as np

from ...errors import CommandError
from ...util.files import save_or_rescue, write_json_result


def run_train(args: argparse.Namespace) -> int:
    try:
        # preprocessing follows the frames: the simulator's crop for 96x96 frames, else block means
        from ..training import default_epochs, train_pilot

        options, augmentation = robustness_options(args)
        model, report = train_pilot(args.sessions, hidden=args.hidden, arch=args.arch,
                                    epochs=args.epochs or default_epochs(args.arch),
                                    val_fraction=args.val_fraction, seed=args.seed, balance=args.balance,
                                    history_lag=args.history_lag, preprocess_options=options,
                                    augmentation=augmentation, patience=args.patience)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    save_or_rescue(model.save, args.model, "trained pilot")
    print(f"{args.arch}: {report['frames']:,d} frames, labels {report['label_counts']}")
    print(f"train accuracy {report['train_accuracy']:.2%}", end="")
    if report["validation_accuracy"] is not None:
        print(f", validation accuracy {report['validation_accuracy']:.2%} on held-out (session, episode[, block]) "
              f"{', '.join(report['validation_groups'])} (majority-class baseline "
              f"{report['validation_majority_baseline']:.2%})")
    else:
        print()
    if report.get("validation_accuracy_augmented") is not None:
        print(f"validation accuracy under augmentation {report['validation_accuracy_augmented']:.2%} "
              f"({report['augmented_copies']} augmented cop{'y' if report['augmented_copies'] == 1 else 'ies'})")
    print(f"saved {args.model}")
    write_json_result(args.json, {**report, "model": str(args.model)})
    return 0


def robustness_options(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The preprocessing options and the augmentation spec asked for by ``--colour``, ``--normalise``,
    ``--edges`` and ``--augment COPIES`` (the default ranges of :mod:`..augment`)."""
    from ..augment import DEFAULT_AUGMENTATION

    options: dict = {}
    if args.colour:
        options["colour"] = args.colour
    if args.normalise:
        options["normalise"] = None if args.normalise == "none" else args.normalise
    if args.edges:
        options["edges"] = True
    augmentation = {**DEFAULT_AUGMENTATION, "copies": args.augment} if args.augment else None
    return options, augmentation


def run_check(args: argparse.Namespace) -> int:
    from ...digits.metrics import format_confusion, format_report
    from ..checking import check_pilot
    from .common import load_pilot

    pilot = load_pilot(args.model)
    try:
        result = check_pilot(pilot, args.sessions, args.sheet)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(f"accuracy {result['accuracy']:.2%} on {result['frames']:,d} frames\n")
    print(format_confusion(np.array(result["confusion"]), result["labels"]) + "\n")
    print(format_report(result["per_label"], result["labels"]))
    print(f"\ncontact sheet: {result['contact_sheet']}")
    write_json_result(args.json, result)
    return 0


