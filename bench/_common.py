"""Helpers shared by the benchmarks: data loading, result tables and JSON output."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def ensure_data_env() -> None:
    os.environ.setdefault("SCRATCHPILOT_DATA", str(REPO.parent / "shared" / "data"))


def mnist_features():
    """MNIST as float32 features in [0, 1]: (X_train, y_train), (X_test, y_test)."""
    ensure_data_env()
    from scratchpilot.data import load_mnist, to_features

    (Xtr, ytr), (Xte, yte) = load_mnist("digits", download=False, progress=False)
    return (to_features(Xtr), ytr.astype(np.int64)), (to_features(Xte), yte.astype(np.int64))


def machine() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "platform": sys.platform}


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def write_result(name: str, payload: dict, also=None) -> Path:
    """Write ``bench/results/NAME.json`` (with the machine's description), and a copy to ``also`` if given."""
    from scratchpilot.util.files import write_json, write_json_result

    path = RESULTS / f"{name}.json"
    document = {"machine": machine(), **payload}
    write_json(path, document)
    write_json_result(also, document)
    return path
