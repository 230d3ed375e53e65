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
        if args.exclude:
            name, start, stop = args.exclude
            S.exclude(Path(args.root) / name, int(start), int(stop), args.reason)
        if args.restore:
            name, start, stop = args.restore
            S.restore(Path(args.root) / name, start=int(start), stop=int(stop))
        rows = S.summarize(args.root)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    print(S.format_table(rows))
    write_json_result(args.json, {"sessions": rows})
    return 0


