"""Does the pilot keep driving when the world looks different? One recipe, every appearance condition.

Each run is ``learn_to_drive`` with the recipe's preprocessing, augmentation and share of colour-randomised
recordings, then a drive of the unseen tracks 0..N-1 under each condition of ``car drive --appearance``
(standard, other colours, dusk, camera noise), side by side with the scripted expert on the same tracks
(it reads the track's geometry, so one score serves every condition).

    python bench/pilot_appearance.py [--colour luma|principal] [--normalise none|zscore|stretch] [--edges]
        [--augment none|default] [--copies 1] [--colour-fraction 0.5] [--seeds 0] [--tracks 10]
        [--conditions standard,colours,dusk,noise] [--arch mlp] [--name NAME] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402


def recipe_from(args) -> dict:
    from scratchpilot.car.augment import DEFAULT_AUGMENTATION

    options = {"colour": args.colour, "normalise": None if args.normalise == "none" else args.normalise,
               "edges": args.edges}
    if args.gauges:
        options["crop"] = None
    augmentation = None
    if args.augment != "none":
        augmentation = {**DEFAULT_AUGMENTATION, "copies": args.copies}
        for field in ("brightness", "contrast", "gamma", "noise"):
            value = getattr(args, f"aug_{field}")
            if value:
                augmentation[field] = [float(v) for v in value.split(",")]
    return {"arch": args.arch, "preprocess_options": options, "augmentation": augmentation,
            "colour_fraction": args.colour_fraction, "patience": args.patience, "combine": args.combine,
            "rounds": args.rounds, "dagger_episodes": args.dagger_episodes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--colour", choices=["luma", "principal"], default="luma")
    parser.add_argument("--normalise", choices=["none", "zscore", "stretch"], default="none")
    parser.add_argument("--edges", action="store_true")
    parser.add_argument("--gauges", action="store_true",
                        help="keep the simulator's indicator bar (speed, steering, gyro gauges) in the frame")
    parser.add_argument("--augment", choices=["none", "default"], default="none")
    parser.add_argument("--copies", type=int, default=1)
    for field in ("brightness", "contrast", "gamma", "noise"):
        parser.add_argument(f"--aug-{field}", metavar="LOW,HIGH", help=f"the augmentation's {field} range")
    parser.add_argument("--colour-fraction", type=float, default=0.0)
    parser.add_argument("--patience", type=int, help="early stopping on the validation loss (best epoch kept)")
    parser.add_argument("--combine", choices=["best", "ensemble"], default="best",
                        help="the best round's model, or all rounds' models as one ensemble")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dagger-episodes", type=int, default=8)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--tracks", type=int, default=10)
    parser.add_argument("--conditions", default="standard,colours,dusk,noise")
    parser.add_argument("--name", help="the result's name (default: built from the recipe)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    from scratchpilot.car.pilot import Pilot
    from scratchpilot.car.sim.runs import drive_conditions, expert_scores
    from scratchpilot.car.training import learn_to_drive

    recipe = recipe_from(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    tracks = list(range(args.tracks))
    names = args.conditions.split(",")
    expert = expert_scores(tracks)
    print(f"recipe {recipe}\nseeds {seeds}, tracks 0..{args.tracks - 1} (expert mean {expert['mean_score']:.1f})",
          flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for seed in seeds:
            started = time.perf_counter()
            model, report, _ = learn_to_drive(Path(root) / f"seed{seed}", seed=seed, progress=False,
                                              log=lambda line: print(line, flush=True), **recipe)
            learn_s = time.perf_counter() - started
            results = drive_conditions(Pilot(model), tracks, names, progress=False)
            runs.append({"seed": seed, "learn_s": learn_s, "chosen_round": report["chosen_round"],
                         "validation_accuracy": report["validation_accuracy"],
                         "validation_accuracy_augmented": report.get("validation_accuracy_augmented"),
                         "conditions": {name: {"mean": r["mean_score"], "min": r["min_score"],
                                               "scores": [t["score"] for t in r["tracks"]],
                                               "decide_ms_p99": r["decide_ms_p99"], "loop_hz": r["loop_hz"]}
                                        for name, r in results.items()}})
            print(f"seed {seed}: " + ", ".join(f"{n} {c['mean']:.1f} (worst {c['min']:.1f})"
                                               for n, c in runs[-1]["conditions"].items()), flush=True)
    rows = []
    for name in names:
        means = [r["conditions"][name]["mean"] for r in runs]
        rows.append({"condition": name, "mean": f"{np.mean(means):.1f}",
                     "vs expert": f"{np.mean(means) / expert['mean_score']:.1%}",
                     "worst": f"{min(r['conditions'][name]['min'] for r in runs):.1f}",
                     "per seed": " / ".join(f"{m:.1f}" for m in means),
                     "p99 ms": f"{max(r['conditions'][name]['decide_ms_p99'] for r in runs):.2f}",
                     "Hz": f"{min(r['conditions'][name]['loop_hz'] for r in runs):.0f}"})
    print(table(rows, ["condition", "mean", "vs expert", "worst", "per seed", "p99 ms", "Hz"]))
    print(f"expert mean {expert['mean_score']:.1f}; validation accuracy "
          + ", ".join(f"{r['validation_accuracy']:.1%}" for r in runs))
    spec, aug = recipe["preprocess_options"], recipe["augmentation"]
    name = args.name or (f"pilot_appearance_{args.arch}_{spec['colour']}_{spec['normalise'] or 'none'}"
                         f"{'_edges' if spec['edges'] else ''}{'_gauges' if args.gauges else ''}"
                         f"_aug{aug['copies'] if aug else 0}"
                         f"_colours{args.colour_fraction:g}")
    summary = {"recipe": recipe, "seeds": seeds, "tracks": tracks, "expert_mean": expert["mean_score"],
               "expert_scores": [t["score"] for t in expert["tracks"]], "table": rows, "runs": runs}
    print(f"wrote {write_result(name, summary, also=args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
