"""How long does ``scratchpilot report data mnist`` take? Full MNIST train compared with test, end to end.

Runs the command as a fresh process, exactly as a user would (start-up, loading both splits, the quality
checks with the nearest-neighbour search, the HTML page and its JSON), ``--repeats`` times, and reports
the wall seconds of each run. The acceptance target is under 60 s on this project's 2-core machine;
``tests/test_report.py`` checks what the report says, this script how long it takes.

    python bench/report_speed.py [--repeats 1]

Writes its figures to bench/results/report_speed.json; ``main(argv)`` returns 0 when every run met the
target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, ensure_data_env, table, write_result

#: the acceptance target for the whole report, in wall seconds (start-up included)
TARGET_S = 60.0


def run_once(folder: Path) -> dict:
    out, out_json = folder / "mnist.html", folder / "mnist.json"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scratchpilot.cli", "report", "data", "mnist", "--out", str(out),
                           "--json", str(out_json), "--no-progress"], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"report data mnist failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"seconds": seconds, "html_mib": out.stat().st_size / 2**20, "meets_target": seconds < TARGET_S}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs (default 1)")
    args = parser.parse_args([] if argv is None else argv)
    ensure_data_env()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.repeats):
            row = {"run": run + 1, **run_once(Path(folder))}
            rows.append(row)
            print(table([row], ["run", "seconds", "html_mib", "meets_target"]), flush=True)
    runs = ", ".join(f"{row['seconds']:.1f} s" for row in rows)
    print(f"report data mnist (train 60,000 + test 10,000): {runs} wall, including start-up "
          f"(target < {TARGET_S:g} s)")
    path = write_result("report_speed", {"benchmark": "report_speed", "target_s": TARGET_S, "runs": rows})
    print(f"results: {path.relative_to(REPO)}")
    return 0 if all(row["meets_target"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
