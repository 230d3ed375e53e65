"""How good and how steady the simulator pilot is: the demo's recipe over several training seeds.

Each run is ``learn_to_drive`` (expert recording, DAgger rounds, the best round's model) with one training
seed, then a drive of the unseen tracks 0..N-1, compared with the scripted expert on the same tracks. The
figures the car issue asks for come side by side: mean and worst track against the expert, the spread of
the per-seed means, decide p50/p99, loop rate and the wall time of the whole recipe.

    python bench/pilot_recipe.py [--arch mlp|cnn] [--rounds 2] [--dagger-episodes 8] [--seeds 0,1,2]
                                 [--noise 0.02] [--tracks 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402


def run(seed: int, tracks: list[int], root: Path, **recipe) -> dict:
    from scratchpilot.car.pilot import Pilot
    from scratchpilot.car.sim.runs import drive_sim
    from scratchpilot.car.training import learn_to_drive

    started = time.perf_counter()
    model, report, history = learn_to_drive(root / f"seed{seed}", seed=seed, progress=False,
                                            log=lambda line: print(line, flush=True), **recipe)
    learn_s = time.perf_counter() - started
    result = drive_sim(Pilot(model), tracks, progress=False)
    return {"seed": seed, "mean": result["mean_score"], "min": result["min_score"],
            "scores": [t["score"] for t in result["tracks"]], "laps": result["laps_completed"],
            "decide_ms_p50": result["decide_ms_p50"], "decide_ms_p99": result["decide_ms_p99"],
            "loop_hz": result["loop_hz"], "chosen_round": report["chosen_round"],
            "validation_accuracy": report["validation_accuracy"], "learn_s": learn_s,
            "recipe_s": time.perf_counter() - started,
            "rounds": [{"round": h["round"], "scores": h.get("scores")} for h in history]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--rounds", type=int, default=2, help="DAgger rounds (the demo: 2)")
    parser.add_argument("--dagger-episodes", type=int, default=8, help="tracks per round (the demo: 8)")
    parser.add_argument("--noise", type=float, default=0.02, help="expert perturbation rate (the demo: 0.02)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    parser.add_argument("--tracks", type=int, default=10, help="unseen tracks 0..N-1 (default 10)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here (they always go to "
                        "bench/results/pilot_recipe_ARCH_rROUNDSxEPISODES_noiseN.json)")
    args = parser.parse_args(argv)
    from scratchpilot.car.sim.runs import expert_scores

    seeds = [int(s) for s in args.seeds.split(",")]
    tracks = list(range(args.tracks))
    expert = expert_scores(tracks)
    recipe = {"arch": args.arch, "rounds": args.rounds, "dagger_episodes": args.dagger_episodes, "noise": args.noise}
    print(f"recipe {recipe}, seeds {seeds}, tracks 0..{args.tracks - 1} (expert mean {expert['mean_score']:.1f})",
          flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for seed in seeds:
            runs.append(run(seed, tracks, Path(root), **recipe))
            print(f"seed {seed}: mean {runs[-1]['mean']:.1f}, worst {runs[-1]['min']:.1f}", flush=True)
    means = [r["mean"] for r in runs]
    summary = {"recipe": recipe, "expert_mean": expert["mean_score"], "expert_scores": [t["score"] for t in
                                                                                       expert["tracks"]],
               "mean": float(np.mean(means)), "mean_vs_expert": float(np.mean(means)) / expert["mean_score"],
               "worst_track": float(min(r["min"] for r in runs)), "seed_spread": float(max(means) - min(means)),
               "decide_ms_p99": float(max(r["decide_ms_p99"] for r in runs)),
               "loop_hz_min": float(min(r["loop_hz"] for r in runs)),
               "recipe_s_max": float(max(r["recipe_s"] for r in runs)), "runs": runs}
    rows = [{"seed": r["seed"], "mean": f"{r['mean']:.1f}", "worst": f"{r['min']:.1f}", "laps": r["laps"],
             "round": r["chosen_round"], "p99 ms": f"{r['decide_ms_p99']:.2f}", "Hz": f"{r['loop_hz']:.0f}",
             "s": f"{r['recipe_s']:.0f}"} for r in runs]
    print(table(rows, ["seed", "mean", "worst", "laps", "round", "p99 ms", "Hz", "s"]))
    print(f"mean {summary['mean']:.1f} = {summary['mean_vs_expert']:.1%} of the expert's {expert['mean_score']:.1f}; "
          f"worst track {summary['worst_track']:.1f}; spread of the seed means {summary['seed_spread']:.1f}")
    name = f"pilot_recipe_{args.arch}_r{args.rounds}x{args.dagger_episodes}_noise{args.noise:g}"
    path = write_result(name, summary, also=args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
