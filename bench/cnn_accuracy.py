"""Test accuracy and training time of the digits CNN: one model, test-time augmentation, an ensemble.

Trains ``--seeds`` CNNs (``scratchpilot digits train --arch cnn``'s recipe) on MNIST, or on Fashion-MNIST with
``--data fashion``, one after the other, and reports on the 10,000 test images: each model alone, each with
test-time augmentation (the image and its four one-pixel shifts), the ensemble of all of them (mean of their
probabilities), and the ensemble with TTA. ``--models a.npz b.npz`` evaluates models trained before instead
of training (their training time is read from their history). A full run takes about 17 minutes per model
on this 2-core machine, so it is not part of ``make bench``'s default list.

Run: ``python bench/cnn_accuracy.py [--data digits|fashion] [--seeds 1] [--models ...] [--save DIR] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import ensure_data_env, table, write_result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "fashion"], default="digits")
    parser.add_argument("--seeds", type=int, default=1, help="models to train, seeds 0..N-1 (default 1)")
    parser.add_argument("--models", nargs="+", help="evaluate these model files instead of training")
    parser.add_argument("--save", help="folder to save the trained models in")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ensure_data_env()
    from scratchpilot import nn
    from scratchpilot.data import load_mnist, to_features
    from scratchpilot.digits import models

    (Xtr, ytr), (Xte, yte) = load_mnist(args.data, download=False, progress=False)
    features = to_features(Xte)
    members, rows = [], []

    def report(name, model, seconds):
        plain = float((model.predict_proba(features).argmax(1) == yte).mean())
        tta = float((models.predict_proba_tta(model, features).argmax(1) == yte).mean())
        rows.append({"model": name, "test accuracy": plain, "with TTA": tta, "train s": seconds,
                     "accuracy": f"{plain:.2%}", "accuracy with TTA": f"{tta:.2%}"})

    if args.models:
        for path in args.models:
            model = nn.load(path)
            members.extend(getattr(model, "members", [model]))
            report(Path(path).name, model, sum(model.history.get("epoch_seconds", [])) or None)
    else:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            model = models.train(models.CNN, Xtr, ytr, seed=seed, progress=True)
            seconds = time.perf_counter() - t0
            members.append(model)
            report(f"seed {seed}", model, seconds)
            if args.save:
                model.metadata.update(dataset=args.data, train_seconds=seconds)
                model.save(Path(args.save) / f"cnn-{args.data}-seed{seed}.npz")
    if len(members) > 1:
        report(f"ensemble of {len(members)}", nn.Ensemble(members), None)
    print(table(rows, ["model", "accuracy", "accuracy with TTA", "train s"]))
    payload = {"data": args.data, "recipe": models._jsonable_config(models.CNN), "rows": rows}
    path = write_result(f"cnn_accuracy_{args.data}", payload, also=args.json)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
