"""How long the pilot takes per frame: preprocessing alone, then preprocess + network (the decide step),
for the MLP and the CNN pilot of the simulator's shapes, on one BLAS thread as the vehicle loop runs it;
each with the luma preprocessing and with the demo's colour-blind one (principal colour axis + z-score).

The goal the car issue sets: decide p99 < 2 ms. Weights are untrained, which does not change the time.

    python bench/pilot_latency.py [--frames 2000] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402

GOAL_P99_MS = 2.0


def pilot(arch: str, options: dict | None = None):
    from scratchpilot import nn
    from scratchpilot.car.links import LABELS
    from scratchpilot.car.pilot import Pilot
    from scratchpilot.car.preprocess import FramePreprocessor, default_spec
    from scratchpilot.car.training import pilot_layers

    preprocess = FramePreprocessor({**default_spec((96, 96, 3)), **(options or {})})
    rows, cols, channels = preprocess.output_shape((96, 96, 3))
    shape = (rows, cols, 2 * channels) if arch == "cnn" else (2 * rows * cols * channels,)
    model = nn.Sequential(pilot_layers(arch, shape, len(LABELS)), input_shape=shape, seed=0)
    model.metadata = {"labels": list(LABELS), "preprocessing": preprocess.spec, "history_lag": 2,
                      "input_layout": "image" if arch == "cnn" else "flat", "image_shape": [rows, cols, channels]}
    return Pilot(model)


def timed(function, frames, count: int) -> dict:
    for i in range(50):
        function(frames[i % len(frames)])
    times = []
    for i in range(count):
        started = time.perf_counter()
        function(frames[i % len(frames)])
        times.append((time.perf_counter() - started) * 1000)
    data = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(data, 50)), 4), "p99_ms": round(float(np.percentile(data, 99)), 4),
            "max_ms": round(float(data.max()), 4), "n": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames timed per row (default 2000)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    from scratchpilot.nn import blas_threads

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
    rows = []
    from scratchpilot.car.training import DEMO_PREPROCESS

    with blas_threads(1):
        for look, options in (("luma", {}), ("colour-blind", DEMO_PREPROCESS)):
            pilots = {arch: pilot(arch, options) for arch in ("mlp", "cnn")}
            rows.append({"step": f"preprocess one 96x96 frame, {look}",
                         **timed(pilots["mlp"].preprocess, frames, args.frames)})
            for arch, chosen in pilots.items():
                rows.append({"step": f"decide, {arch} (preprocess + network), {look}",
                             **timed(chosen.decide, frames, args.frames)})
    print(table(rows, ["step", "p50_ms", "p99_ms", "max_ms", "n"]))
    met = all(r["p99_ms"] < GOAL_P99_MS for r in rows)
    print(f"goal decide p99 < {GOAL_P99_MS:g} ms: {'met' if met else 'missed'}")
    path = write_result("pilot_latency", {"rows": rows, "goal_p99_ms": GOAL_P99_MS, "goal_met": met},
                        also=args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
