"""Which preprocessing and augmentation make the pilot see the same road under every look? Measured offline.

Driving scores swing by hundreds of points between two training seeds of the same recipe, so they cannot
tell two preprocessing choices apart in a few runs. This bench takes the noise of driving out: the
scripted expert drives a few held-out tracks once per appearance condition; it steers from the car's
state, so the trajectories, and the labels, are identical under every look, frame for frame. Each recipe
is trained once on expert recordings of the training tracks, then every frame of every condition is
classified. Two figures per condition:

- **accuracy**: the prediction equals the expert's label;
- **agreement**: the prediction equals the same pilot's prediction for the same frame under the standard
  look -- 100 % is a pilot that does not notice the change at all.

    python bench/pilot_invariance.py [--tracks 5] [--train-tracks 10] [--recipes NAME,...] [--epochs 10]
                                     [--json PATH]
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

EVAL_FIRST_TRACK = 500  #: held-out tracks: neither training (>= 1000) nor the demo's driving tracks (< 10)


def recipes() -> dict[str, dict]:
    """name -> preprocessing options, augmentation and whether colour-randomised recordings are added."""
    from scratchpilot.car.augment import DEFAULT_AUGMENTATION as AUG

    principal = {"colour": "principal", "normalise": "zscore"}
    return {
        "luma (as before)": {"options": {}},
        "luma + zscore": {"options": {"normalise": "zscore"}},
        "luma + stretch": {"options": {"normalise": "stretch"}},
        "luma + zscore + edges": {"options": {"normalise": "zscore", "edges": True}},
        "principal + zscore": {"options": principal},
        "principal + stretch": {"options": {"colour": "principal", "normalise": "stretch"}},
        "principal + zscore + edges": {"options": {**principal, "edges": True}},
        "luma + zscore, aug": {"options": {"normalise": "zscore"}, "augmentation": AUG},
        "luma + zscore, colours": {"options": {"normalise": "zscore"}, "colours": True},
        "luma + zscore, aug + colours": {"options": {"normalise": "zscore"}, "augmentation": AUG, "colours": True},
        "principal + zscore, aug": {"options": principal, "augmentation": AUG},
        "principal + zscore, colours": {"options": principal, "colours": True},
        "principal + zscore, aug + colours": {"options": principal, "augmentation": AUG, "colours": True},
        "principal + zscore, aug x2 + colours": {"options": principal, "augmentation": {**AUG, "copies": 2},
                                                 "colours": True},
        # one augmentation at a time switched off, on the full recipe
        "  ... without noise": {"options": principal, "augmentation": {**AUG, "noise": [0.0, 0.0]}, "colours": True},
        "  ... without blur": {"options": principal, "augmentation": {**AUG, "blur": 0.0}, "colours": True},
        "  ... without brightness/contrast/gamma": {
            "options": principal, "colours": True,
            "augmentation": {**AUG, "brightness": [1.0, 1.0], "contrast": [1.0, 1.0], "gamma": [1.0, 1.0]}},
        "  ... without colour shifts": {"options": principal, "colours": True,
                                        "augmentation": {**AUG, "channel_gain": 0.0, "colour_shift": 0.0}},
    }


def record_conditions(root: Path, tracks: list[int], names: list[str]) -> dict[str, Path]:
    from scratchpilot.car.sim.appearance import condition
    from scratchpilot.car.sim.runs import record_expert

    return {name: record_expert(root / name, tracks, noise=0.02, rng_seed=1, progress=False,
                                appearance=condition(name))[0] for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=5, help="held-out tracks per condition (default 5)")
    parser.add_argument("--train-tracks", type=int, default=10, help="expert training tracks (default 10)")
    parser.add_argument("--recipes", help="comma-separated recipe names (default: all)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    from scratchpilot.car.pilot import Pilot, model_inputs
    from scratchpilot.car.sessions import load_frames
    from scratchpilot.car.sim.appearance import CONDITIONS, TRAINING_COLOURS
    from scratchpilot.car.sim.runs import record_expert
    from scratchpilot.car.training import DEMO_TRAIN_SEEDS_START, train_pilot

    chosen = recipes()
    if args.recipes:
        chosen = {name: chosen[name] for name in args.recipes.split(",")}
    names = list(CONDITIONS)
    eval_tracks = list(range(EVAL_FIRST_TRACK, EVAL_FIRST_TRACK + args.tracks))
    train_tracks = list(range(DEMO_TRAIN_SEEDS_START, DEMO_TRAIN_SEEDS_START + args.train_tracks))
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        standard, _ = record_expert(root / "train", train_tracks, progress=False)
        # the same tracks again in randomised colours (training draws): what "colours" recipes add
        coloured, _ = record_expert(root / "train-colours", train_tracks, progress=False, rng_seed=2,
                                    appearance=TRAINING_COLOURS)
        evaluation = record_conditions(root / "eval", eval_tracks, names)
        print(f"recorded in {time.perf_counter() - started:.0f} s", flush=True)
        for recipe_name, recipe in chosen.items():
            started = time.perf_counter()
            sessions = [standard, coloured] if recipe.get("colours") else [standard]
            model, report = train_pilot(sessions, epochs=args.epochs, seed=args.seed, progress=False,
                                        preprocess_options=recipe["options"], augmentation=recipe.get("augmentation"))
            pilot = Pilot(model)
            predictions, figures = {}, {}
            for name in names:
                frames = load_frames([evaluation[name]], pilot.preprocess)
                X = model_inputs(pilot, frames.features, frames.groups)
                predictions[name] = model.predict_proba(X).argmax(axis=1)
                figures[name] = {"accuracy": float(np.mean(predictions[name] == frames.labels)),
                                 "agreement": float(np.mean(predictions[name] == predictions["standard"]))}
            results[recipe_name] = {"recipe": recipe, "conditions": figures, "train_s": time.perf_counter() - started,
                                    "validation_accuracy": report["validation_accuracy"]}
            row = {"recipe": recipe_name}
            for name in names:
                row[f"{name} acc"] = f"{figures[name]['accuracy']:.1%}"
                if name != "standard":
                    row[f"{name} agree"] = f"{figures[name]['agreement']:.1%}"
            rows.append(row)
            print(f"{recipe_name}: " + ", ".join(f"{n} {f['accuracy']:.1%}/{f['agreement']:.1%}"
                                                 for n, f in figures.items()), flush=True)
    columns = ["recipe"] + [c for n in names for c in ((f"{n} acc",) if n == "standard" else
                                                        (f"{n} acc", f"{n} agree"))]
    print(table(rows, columns))
    summary = {"eval_tracks": eval_tracks, "train_tracks": train_tracks, "epochs": args.epochs, "seed": args.seed,
               "recipes": results}
    print(f"wrote {write_result('pilot_invariance', summary, also=args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
