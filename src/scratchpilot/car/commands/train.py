"""``scratchpilot car train`` and ``car check``: train a pilot on sessions; check it on sessions."""

from __future__ import annotations

import argparse

import numpy as np

from ...errors import CommandError
from ...util.files import write_json_result


def run_train(args: argparse.Namespace) -> int:
    try:
        # preprocessing follows the frames: the simulator's crop for 96x96 frames, else block means
        from ..training import default_epochs, train_pilot

        model, report = train_pilot(args.sessions, hidden=args.hidden, arch=args.arch,
                                    epochs=args.epochs or default_epochs(args.arch),
                                    val_fraction=args.val_fraction, seed=args.seed, balance=args.balance,
                                    history_lag=args.history_lag)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    model.save(args.model)
    print(f"{args.arch}: {report['frames']:,d} frames, labels {report['label_counts']}")
    print(f"train accuracy {report['train_accuracy']:.2%}", end="")
    if report["validation_accuracy"] is not None:
        print(f", validation accuracy {report['validation_accuracy']:.2%} on held-out (session, episode[, block]) "
              f"{', '.join(report['validation_groups'])} (majority-class baseline "
              f"{report['validation_majority_baseline']:.2%})")
    else:
        print()
    print(f"saved {args.model}")
    write_json_result(args.json, {**report, "model": str(args.model)})
    return 0


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


