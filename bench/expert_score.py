"""How well the scripted expert drives, and how fast the simulator runs.

Drives tracks 0..9 of ``CarRacing-v3`` (discrete actions, 1000-frame limit) with
:class:`scratchpilot.car.sim.expert.ScriptedExpert`, prints each track's score and the mean, then times the
simulator: state-only stepping (what the expert needs) and stepping with 96x96 frames, both with the
vectorised road painter and with gymnasium's own drawing. Writes everything to
``bench/results/expert_score.json``.

    python bench/expert_score.py [--seeds 0-9] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "expert_score.json"


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"`` (or a mix) -> list of ints."""
    seeds: list[int] = []
    for part in text.split(","):
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad seed list {text!r}: expected e.g. 0-9 or 0,3,5") from None
    return seeds


def score_tracks(seeds: list[int]) -> tuple[list[dict], float]:
    """Drive each track state-only; return per-track metrics and the total wall time in seconds."""
    from scratchpilot.car.sim.env import Simulator
    from scratchpilot.car.sim.expert import ScriptedExpert, drive_episode

    rows = []
    start = time.perf_counter()
    for seed in seeds:
        track_start = time.perf_counter()
        with Simulator(seed, render_frames=False) as sim:
            metrics = drive_episode(sim, ScriptedExpert())
        row = {**metrics.to_dict(), "seconds": round(time.perf_counter() - track_start, 3)}
        rows.append(row)
        print(f"track {seed:3d}: score {row['score']:7.1f}  {row['steps']:4d} frames  "
              f"{row['tiles_visited']}/{row['tiles_total']} tiles  off-track {row['off_track_steps']:3d}  "
              f"lap {'yes' if row['lap_completed'] else 'NO'}", flush=True)
    return rows, time.perf_counter() - start


def time_rendering(seed: int, steps: int, fast_render: bool) -> float:
    """Frames per second of expert driving with 96x96 observations drawn every step."""
    from scratchpilot.car.sim.env import Simulator
    from scratchpilot.car.sim.expert import ScriptedExpert

    with Simulator(seed, fast_render=fast_render) as sim:
        expert = ScriptedExpert()
        expert.reset(sim.track)
        start = time.perf_counter()
        for _ in range(steps):
            sim.read()
            sim.send(expert.act(sim.car))
        return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=parse_seeds, default=list(range(10)), help="tracks (default 0-9)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"result file (default {RESULTS})")
    parser.add_argument("--render-steps", type=int, default=300, help="frames per rendering timing")
    args = parser.parse_args(argv)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

    from scratchpilot.car.sim.expert import ExpertParams

    rows, seconds = score_tracks(args.seeds)
    scores = [row["score"] for row in rows]
    total_steps = sum(row["steps"] for row in rows)
    mean = sum(scores) / len(scores)
    print(f"mean score {mean:.1f} over {len(scores)} tracks (min {min(scores):.1f}, max {max(scores):.1f}); "
          f"{sum(row['lap_completed'] for row in rows)} laps completed")

    state_rate = total_steps / seconds
    fast_rate = time_rendering(args.seeds[0], args.render_steps, fast_render=True)
    stock_rate = time_rendering(args.seeds[0], args.render_steps, fast_render=False)
    print(f"steps/s with the expert: state only {state_rate:.0f}, with frames {fast_rate:.0f} "
          f"(gymnasium's drawing: {stock_rate:.0f})")

    result = {
        "benchmark": "expert_score",
        "env": "CarRacing-v3, continuous=False, max_episode_steps=1000",
        "seeds": args.seeds,
        "mean_score": round(mean, 2),
        "min_score": round(min(scores), 2),
        "max_score": round(max(scores), 2),
        "laps_completed": sum(row["lap_completed"] for row in rows),
        "tracks": rows,
        "expert_params": ExpertParams().to_dict(),
        "steps_per_second": {
            "state_only_with_expert": round(state_rate, 1),
            "frames_fast_render": round(fast_rate, 1),
            "frames_gymnasium_render": round(stock_rate, 1),
        },
        "machine": {"python": platform.python_version(), "processor": platform.machine(),
                    "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
