"""How fast is a Kaggle Digit Recognizer train.csv read? scratchpilot's parser vs pandas vs numpy.loadtxt.

Builds a train-format CSV (``label,pixel0..pixel783``) of the first 42,000 MNIST training images (the
size of Kaggle's train.csv, about 76 MB) in a temp folder, then times each reader on it and checks
that each one returns exactly the pixels and labels that were written.

    python bench/csv_parse.py [--rows 42000] [--repeats 3] [--no-loadtxt]

Writes its figures to bench/results/csv_parse.json; ``main(argv)`` returns the same dict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import ensure_data_env, table, write_result


def _read_with_scratchpilot(path: Path):
    from scratchpilot.data import read_kaggle_csv

    return read_kaggle_csv(path)


def _read_with_pandas(path: Path):
    import pandas as pd

    table = pd.read_csv(path).to_numpy(dtype=np.uint8)
    return np.ascontiguousarray(table[:, 1:]), table[:, 0].astype(np.int64)


def _read_with_loadtxt(path: Path):
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)
    return np.ascontiguousarray(table[:, 1:]), table[:, 0].astype(np.int64)


def _read_with_fromstring(path: Path):
    """The shortest NumPy route: no checks of the structure or of the value range at all."""
    text = path.read_bytes()
    body = text[text.index(b"\n") + 1:].replace(b"\n", b",")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(body, dtype=np.int16, sep=",")
    table = values.reshape(-1, 785).astype(np.uint8)
    return np.ascontiguousarray(table[:, 1:]), table[:, 0].astype(np.int64)


def _time(reader, path: Path, repeats: int, expected) -> dict:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        X, y = reader(path)
        seconds.append(time.perf_counter() - start)
    correct = bool(np.array_equal(X, expected[0]) and np.array_equal(y, expected[1]))
    return {"best_s": round(min(seconds), 4), "median_s": round(statistics.median(seconds), 4),
            "runs": len(seconds), "correct": correct}


def _mnist_train():
    ensure_data_env()
    from scratchpilot.data import resolve_dataset

    return resolve_dataset("mnist", download=False, progress=False)


def run(rows: int = 42000, repeats: int = 3, loadtxt: bool = True) -> dict:
    """Time the readers on a ``rows``-line train CSV; returns the figures."""
    from scratchpilot.data import write_kaggle_csv

    mnist = _mnist_train()
    images = mnist.images[:rows].reshape(-1, 784)
    labels = mnist.labels[:rows]
    results = []
    with tempfile.TemporaryDirectory(prefix="csv-bench-") as tmp:
        csv_path, gz_path = Path(tmp) / "train.csv", Path(tmp) / "train.csv.gz"
        start = time.perf_counter()
        write_kaggle_csv(csv_path, images, labels)
        write_seconds = time.perf_counter() - start
        write_kaggle_csv(gz_path, images, labels)
        size = csv_path.stat().st_size

        readers = [("scratchpilot read_kaggle_csv", _read_with_scratchpilot, csv_path, repeats),
                   ("scratchpilot read_kaggle_csv (.csv.gz)", _read_with_scratchpilot, gz_path, repeats)]
        try:
            import pandas

            readers.append((f"pandas {pandas.__version__} read_csv (C engine)", _read_with_pandas, csv_path,
                            repeats))
        except ImportError:
            print("pandas is not installed: skipped (pip install -e '.[bench]')", file=sys.stderr)
        readers.append(("numpy.fromstring (no validation)", _read_with_fromstring, csv_path, repeats))
        if loadtxt:
            readers.append((f"numpy {np.__version__} loadtxt", _read_with_loadtxt, csv_path, 1))
        for name, reader, path, n in readers:
            timing = _time(reader, path, n, (images, labels))
            results.append({"reader": name, **timing, "mib_per_s": round(size / 2**20 / timing["best_s"], 1)})
            print(f"  {name}: {timing['best_s']:.3f} s", file=sys.stderr, flush=True)
    ours = results[0]["best_s"]
    for row in results:
        row["vs_scratchpilot"] = round(row["best_s"] / ours, 2)
    return {"rows": int(len(images)), "columns": 785, "csv_bytes": size,
            "write_kaggle_csv_s": round(write_seconds, 4), "load_average_1min": round(os.getloadavg()[0], 2),
            "readers": results}


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry (also called by run_all.py): runs, prints the table, writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=42000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-loadtxt", action="store_true", help="skip numpy.loadtxt")
    args = parser.parse_args(argv)
    figures = run(rows=args.rows, repeats=args.repeats, loadtxt=not args.no_loadtxt)
    print(f"\nKaggle train-format CSV: {figures['rows']} rows x {figures['columns']} columns, "
          f"{figures['csv_bytes'] / 2**20:.1f} MiB (written by write_kaggle_csv in "
          f"{figures['write_kaggle_csv_s']:.2f} s); load average {figures['load_average_1min']}")
    print(table(figures["readers"], ["reader", "best_s", "median_s", "mib_per_s", "vs_scratchpilot", "correct"]))
    path = write_result("csv_parse", figures)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
