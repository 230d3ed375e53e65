"""Drift detection through the real server: ``scratchpilot serve`` (two forked workers, prediction log on)
answers MNIST's 10,000 test digits in a shuffled order, then 500 each of Fashion-MNIST, digits turned 30°,
digits with 3× the stroke width and inverted digits; ``report monitor --window 500req`` reads the log.

Reported per scenario: windows, windows flagged as drift (false alarms for MNIST), whether the first
window of the shift is flagged, the features and statistics behind the verdict; and the same MNIST
digits in the file's own order (writers in blocks: its first 5,000 were written by Census Bureau
employees, the last 5,000 by students; LeCun et al.), where whole windows of one population can read as
a shift from the training mixture.

The model: ``--model`` (needs a reference profile), else the default digits model trained here with one.

Run: ``python bench/monitor_drift.py [--model m.npz] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import REPO, ensure_data_env, table, write_result

sys.path.insert(0, str(REPO / "tests"))
from drift_inputs import inverted, rotated, stroke_px, thick  # noqa: E402

WINDOW = 500


def serve(model: Path, log_dir: Path):
    process = subprocess.Popen([sys.executable, "-m", "scratchpilot", "serve", "--model", str(model), "--port", "0",
                                "--workers", "2", "--log", str(log_dir)], stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "serving on " in line:
            host, port = line.split("serving on http://")[1].split("/")[0].split(":")
            return process, http.client.HTTPConnection(host, int(port), timeout=10)
    raise RuntimeError("the server did not start")


def send(connection, images) -> int:
    errors = 0
    for image in images:
        connection.request("POST", "/api/predict", body=json.dumps({"pixels": image.reshape(-1).tolist()}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        errors += response.status != 200
    return errors


def run(model: Path, scenarios: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Serve, send each scenario in turn, read the log back in windows of WINDOW; one row per scenario."""
    from scratchpilot.cli import main

    with tempfile.TemporaryDirectory() as folder:
        log_dir = Path(folder) / "log"
        process, connection = serve(model, log_dir)
        try:
            errors = sum(send(connection, images) for _, images in scenarios)
        finally:
            process.terminate()
            process.wait(timeout=20)
        out = Path(folder) / "monitor.json"
        main(["report", "monitor", str(log_dir), "--model", str(model), "--window", f"{WINDOW}req", "--out",
              str(Path(folder) / "monitor.html"), "--json", str(out)])
        report = json.loads(out.read_text())
    rows, start = [], 0
    for name, images in scenarios:
        count = len(images) // WINDOW
        windows = report["windows"][start:start + count]
        start += count
        flagged = [w for w in windows if w["verdict"] == "drift"]
        worst = max(windows, key=lambda w: max(s["psi"] for s in w["features"].values()))
        feature, stats = max(worst["features"].items(), key=lambda kv: kv[1]["psi"])
        rows.append({"scenario": name, "requests": len(images), "windows": count, "drift_windows": len(flagged),
                     "first_window_drift": windows[0]["verdict"] == "drift",
                     "verdicts": [w["verdict"] for w in windows],
                     "largest_psi": f"{feature} {stats['psi']:.2f} (KS p {stats['p']:.1g})",
                     "class_psi_max": max((w["classes"]["psi"] for w in windows if w["classes"]), default=None),
                     "errors": errors if name == scenarios[0][0] else 0})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a digits model with a reference profile")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    ensure_data_env()
    from scratchpilot import nn
    from scratchpilot.data import load_mnist
    from scratchpilot.digits import models

    (X_train, _), (digits, _) = load_mnist("digits", download=False, progress=False)
    _, (fashion, _) = load_mnist("fashion", download=False, progress=False)
    model = args.model
    if model is None:
        model = Path(tempfile.mkdtemp()) / "profiled.npz"
        trained = nn.load(models.ensure_default_model(progress=True))
        models.attach_profile(trained, X_train, held_out=(digits, "mnist-test"), source="mnist-train")
        trained.save(model)
    order = np.random.default_rng(7).permutation(len(digits))
    shifts = digits[order[:3 * WINDOW]]
    thickened = thick(shifts[2 * WINDOW:])
    scenarios = [("MNIST test, shuffled", digits[order]), ("Fashion-MNIST", fashion[:WINDOW]),
                 ("rotated 30°", rotated(shifts[:WINDOW])), ("3× stroke width", thick(shifts[WINDOW:2 * WINDOW])),
                 ("inverted", inverted(shifts[2 * WINDOW:]))]
    rows = run(model, scenarios)
    in_order = run(model, [("MNIST test, file order", digits)])
    columns = ["scenario", "requests", "windows", "drift_windows", "first_window_drift", "largest_psi", "errors"]
    print(table(rows + in_order, columns))
    print(f"stroke width (median 2·area/perimeter): MNIST {stroke_px(digits[:2000]):.2f} px, thickened "
          f"{stroke_px(thickened):.2f} px ({stroke_px(thickened) / stroke_px(shifts[2 * WINDOW:]):.2f}×)")
    payload = {"benchmark": "monitor_drift", "model": str(model), "window": WINDOW, "scenarios": rows,
               "mnist_in_file_order": in_order}
    path = write_result("monitor_drift", payload, also=args.json)
    print(f"results: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
