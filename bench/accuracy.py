"""MNIST test accuracy and wall time of the tutorial's set-up and of the best MLP.

Run: ``python bench/accuracy.py [--seed 0] [--only blog|best] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import time

from _common import ensure_data_env, table, write_result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["blog", "best"])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ensure_data_env()
    from scratchpilot.data import load_mnist, to_features
    from scratchpilot.digits import models

    (Xtr, ytr), (Xte, yte) = load_mnist("digits", download=False, progress=False)
    rows, results = [], {}
    for name in ([args.only] if args.only else ["blog", "best"]):
        config = models.CONFIGS[name]
        t0 = time.perf_counter()
        model = models.train(config, Xtr, ytr, seed=args.seed, validation=(Xte, yte), progress=True)
        seconds = time.perf_counter() - t0
        acc = model.evaluate(to_features(Xte), yte)["accuracy"]
        results[name] = {"test_accuracy": acc, "train_seconds": seconds, "epochs": config.epochs,
                         "best_epoch_accuracy": max(model.history["val_accuracy"]),
                         "val_accuracy_per_epoch": model.history["val_accuracy"],
                         "config": models._jsonable_config(config)}
        rows.append({"config": name, "test accuracy": f"{acc:.2%}", "train s": seconds, "epochs": config.epochs,
                     "hidden": "-".join(map(str, config.hidden))})
    print(table(rows, ["config", "hidden", "epochs", "test accuracy", "train s"]))
    path = write_result("accuracy", {"seed": args.seed, "results": results}, also=args.json)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
