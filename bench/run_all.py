"""``make bench``: run every benchmark in turn; each prints its table and writes bench/results/NAME.json.

The long ones run on their own: ``cnn_accuracy.py`` (the digits CNN, ~20 min a seed),
``pilot_recipe.py`` (the demo's recipe over three training seeds, ~15-20 min), ``pilot_appearance.py``
(one recipe under every look, ~7 min a seed) and ``pilot_invariance.py`` (preprocessing and augmentation
choices on paired frames, ~8 min), ``transfer.py`` (EfficientNet-Lite0 retrained on MNIST and
Fashion-MNIST JPEG folders beside from-scratch networks, ~30 min) and ``transfer_parity.py`` (logits and
speed against PyTorch; needs the bench extra, ~2 min) and ``tune.py`` (the pruner, the workers and
PostgreSQL, ~25 min; ``--parts automl`` 30 min, ``--parts car`` ~30 min)."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = [
    "train_speed", "cnn_speed", "conv_layout", "accuracy", "csv_parse", "serve_load", "expert_score", "stream_latency",
    "report_speed", "pilot_latency", "tub_robustness", "monitor_drift",
]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        if not (Path(__file__).parent / f"{name}.py").exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(name).main([])
        except Exception as exc:  # report and go on with the other benchmarks
            print(f"{name} failed: {type(exc).__name__}: {exc}")
            failed.append(name)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)")
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
