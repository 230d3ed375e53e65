"""``scratchpilot demo``: the main job: learn to drive from the scripted expert (DAgger), drive unseen
tracks, and compare with the expert on the same tracks."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ...util.files import save_or_rescue, write_json, write_json_result


def run(args: argparse.Namespace) -> int:
    from ..pilot import Pilot
    from ..sim.runs import drive_conditions, expert_scores
    from ..training import DEMO_ARCH, DEMO_DAGGER_EPISODES, DEMO_DAGGER_ROUNDS, DEMO_EPISODES, learn_to_drive
    from .drive import format_conditions_table, format_drive_table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes = args.episodes or DEMO_EPISODES
    rounds = DEMO_DAGGER_ROUNDS if args.rounds is None else args.rounds
    dagger_episodes = args.dagger_episodes or DEMO_DAGGER_EPISODES
    arch = getattr(args, "arch", None) or DEMO_ARCH
    t0 = time.perf_counter()
    print(f"1/3 learning to drive ({arch} pilot): the scripted expert on {episodes} training tracks, then "
          f"{rounds} rounds of the pilot driving while the expert labels (DAgger)", flush=True)
    model, report, learning = learn_to_drive(out / "sessions", episodes=episodes, seed=args.seed,
                                           rounds=rounds, dagger_episodes=dagger_episodes, arch=arch,
                                           max_steps=args.max_steps, log=lambda line: print(line, flush=True))
    model_path = out / "pilot.npz"
    save_or_rescue(model.save, model_path, "trained pilot")
    learn_s = time.perf_counter() - t0

    seeds = list(range(args.seed, args.seed + args.tracks))
    names = list(dict.fromkeys(getattr(args, "appearance", None) or ["standard"]))
    print(f"2/3 the pilot drives {len(seeds)} unseen tracks (seeds {seeds[0]}..{seeds[-1]}) under each look: "
          f"{', '.join(names)}", flush=True)
    t1 = time.perf_counter()
    conditions = drive_conditions(Pilot(model), seeds, names, video=out / "drive.gif", max_steps=args.max_steps)
    result = conditions[names[0]]
    drive_s = time.perf_counter() - t1
    print("3/3 the expert on the same tracks, for comparison", flush=True)
    expert = expert_scores(seeds)
    total_s = time.perf_counter() - t0
    print(f"\n{names[0]}:")
    print(format_drive_table(result, expert))
    print()
    print(format_conditions_table(conditions, expert))
    results = {"arch": arch, "appearance": names[0], "mean_score": result["mean_score"],
               "min_score": result["min_score"],
               "expert_mean_score": expert["mean_score"],
               "score_vs_expert": result["mean_score"] / expert["mean_score"],
               "decide_ms_p99": result["decide_ms_p99"], "decide_ms_p50": result["decide_ms_p50"],
               "loop_hz": result["loop_hz"], "laps_completed": result["laps_completed"],
               "tracks": result["tracks"], "expert_tracks": expert["tracks"], "train_report": report,
               "conditions": {name: {key: value for key, value in r.items() if key != "video"}
                              for name, r in conditions.items()},
               "learning_rounds": learning, "timings": {"learn_s": learn_s, "drive_s": drive_s, "total_s": total_s},
               "model": str(model_path), "video": result.get("video")}
    write_json(out / "results.json", results)
    write_json_result(args.json, results)
    print(f"\nmodel {model_path}, video {result.get('video')}, results {out / 'results.json'} "
          f"({total_s / 60:.1f} min)")
    return 0


