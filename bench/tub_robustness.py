"""The real donkeycar tub: does appearance robustness cost held-out accuracy on a real car's frames?

The same split as ``tests/test_car_workflow.py`` (blocks of 100 consecutive frames held out), each recipe
trained with two seeds, MLP and CNN: the preprocessing as before, the demo's colour-blind preprocessing
(principal colour axis + per-frame z-score), and that with the demo's photometric augmentation.

    python bench/tub_robustness.py [--seeds 0,1] [--archs mlp,cnn] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_data_env, table, write_result  # noqa: E402

EPOCHS = {"mlp": 25, "cnn": 6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--archs", default="mlp,cnn")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    ensure_data_env()
    import os

    from scratchpilot.car.sessions.importers import import_tub
    from scratchpilot.car.training import DEMO_AUGMENTATION, DEMO_PREPROCESS, train_pilot

    recipes = {"as before": ({}, None), "colour-blind": (DEMO_PREPROCESS, None),
               "colour-blind + augmentation": (DEMO_PREPROCESS, DEMO_AUGMENTATION),
               "augmentation only": ({}, DEMO_AUGMENTATION)}
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tub = Path(os.environ["SCRATCHPILOT_DATA"]) / "donkeycar-tub" / "tub.tar.gz"
        session = import_tub(tub, Path(tmp))
        for arch in args.archs.split(","):
            for name, (options, augmentation) in recipes.items():
                accuracies, augmented, baseline = [], [], None
                for seed in seeds:
                    _, report = train_pilot([session], epochs=EPOCHS[arch], history_lag=0, hidden=64, seed=seed,
                                            progress=False, arch=arch, preprocess_options=options,
                                            augmentation=augmentation)
                    accuracies.append(report["validation_accuracy"])
                    augmented.append(report.get("validation_accuracy_augmented"))
                    baseline = report["validation_majority_baseline"]
                results[f"{arch}: {name}"] = {"validation_accuracy": accuracies,
                                              "validation_accuracy_augmented": augmented, "majority": baseline}
                rows.append({"arch": arch, "recipe": name,
                             "held-out accuracy": " / ".join(f"{a:.1%}" for a in accuracies),
                             "mean": f"{np.mean(accuracies):.1%}",
                             "under augmentation": " / ".join(f"{a:.1%}" for a in augmented if a is not None) or "-"})
                print(rows[-1], flush=True)
    print(table(rows, ["arch", "recipe", "held-out accuracy", "mean", "under augmentation"]))
    print(f"wrote {write_result('tub_robustness', {'seeds': seeds, 'recipes': results}, also=args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
