"""``scratchpilot car sessions``: list sessions, exclude or restore frame ranges, import tubs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import CommandError
from ...util.files import write_json_result


def run(args: argparse.Namespace) -> int:
    from ..sessions import cleaning as S

    try:
        if args.import_tub or args.import_npz:
            from ..sessions.importers import import_autorccar, import_tub

            path = import_tub(args.import_tub, args.root) if args.import_tub else \
                import_autorccar(args.import_npz, args.root)
            print(f"imported {path}")
        unrepaired = _repair(args.root) if args.repair else []
        if args.exclude:
            name, start, stop = _frame_range("--exclude", args.exclude)
            S.exclude(Path(args.root) / name, start, stop, args.reason)
        if args.restore:
            name, start, stop = _frame_range("--restore", args.restore)
            S.restore(Path(args.root) / name, start=start, stop=stop)
        rows = S.summarize(args.root)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(S.format_table(rows))
    write_json_result(args.json, {"sessions": rows})
    if unrepaired:
        raise CommandError(f"could not rebuild the manifest of {', '.join(map(str, unrepaired))} (see above)")
    return 0


def _frame_range(option: str, values: list[str]) -> tuple[str, int, int]:
    """``SESSION START STOP`` with START and STOP frame numbers, 0 ≤ START < STOP."""
    name, start, stop = values
    try:
        first, end = int(start, 10), int(stop, 10)
    except ValueError:
        raise CommandError(f"{option} {name} {start} {stop}: START and STOP must be frame numbers "
                           f"(integers)") from None
    if not 0 <= first < end:
        raise CommandError(f"{option} {name} {start} {stop}: needs 0 ≤ START < STOP")
    return name, first, end


def _repair(root) -> list:
    """``--repair``: rebuild lost manifests and say what each rebuild could not recover; returns the folders
    that could not be rebuilt."""
    from ..sessions.repair import repair

    results = repair(root)
    failed = []
    if not results:
        print(f"nothing to repair: every session folder in {root} has its manifest")
    for result in results:
        if "error" in result:
            print(f"cannot rebuild {result['path']}: {result['error']}")
            failed.append(result["path"])
            continue
        print(f"rebuilt {result['manifest']}: {result['chunks']} chunks, {result['frames']:,d} frames")
        for item in result["lost"]:
            print(f"  lost: {item}")
        for chunk in result["skipped_chunks"]:
            print(f"  skipped {chunk['file']}: {chunk['reason']}")
    return failed
