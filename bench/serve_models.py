"""Per-request cost of the web page's models: the default MLP against a CNN (and an ensemble), one image at a time.

The web default stays the MLP unless a CNN serves at least as fast (and trains in under 5 minutes here).
This times what a request pays for the model alone — ``DigitClassifier.predict`` on one prepared 28×28
digit, on one BLAS thread as the server runs — over the first ``--n`` MNIST test digits, and reports p50 and
p99 latency and the accuracy on those digits. Run ``bench/serve_load.py --model PATH`` for the whole server.

Run: ``python bench/serve_models.py --model cnn.npz [--model other.npz] [--n 2000] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import ensure_data_env, table, write_result


def time_model(path, images, labels) -> dict:
    """p50/p99 of one ``predict`` call per image, and the accuracy over the images."""
    from scratchpilot.web.classifier import DigitClassifier

    classifier = DigitClassifier(path)
    for image in images[:20]:  # warm-up
        classifier.predict(image)
    seconds, correct = [], 0
    for image, label in zip(images, labels, strict=True):
        t0 = time.perf_counter()
        index, _ = classifier.predict(image)
        seconds.append(time.perf_counter() - t0)
        correct += int(index == label)
    ms = np.array(seconds) * 1000
    return {"model": str(path), "architecture": classifier.info["architecture"],
            "parameters": classifier.info["parameters"], "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests_per_s_one_thread": float(1000 / ms.mean()),
            "accuracy": correct / len(labels), "n": len(labels)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[],
                        help="a model file to compare with the default MLP (repeatable)")
    parser.add_argument("--n", type=int, default=2000, help="test digits to time (default 2000)")
    parser.add_argument("--json", help="also write the results here (always written to bench/results/)")
    args = parser.parse_args(argv)
    ensure_data_env()
    from scratchpilot.data import load_mnist
    from scratchpilot.digits.models import ensure_default_model
    from scratchpilot.nn import set_blas_threads

    _, (images, labels) = load_mnist("digits", download=False, progress=False)
    images, labels = images[:args.n], labels[:args.n]
    set_blas_threads(1)  # as `scratchpilot serve` runs its workers
    rows = [time_model(path, images, labels) for path in [ensure_default_model(), *args.model]]
    base = rows[0]["p50_ms"]
    for row in rows:
        row["x default p50"] = row["p50_ms"] / base
    print(table(rows, ["architecture", "parameters", "p50_ms", "p99_ms", "requests_per_s_one_thread",
                       "accuracy", "x default p50"]))
    path = write_result("serve_models", {"rows": rows, "n": args.n}, also=args.json)
    print(f"results: {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
