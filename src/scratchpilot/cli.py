"""The one ``scratchpilot`` command.

Each application registers its sub-commands through an ``add_parser(subparsers)`` function in its own
``cli`` module; those modules import only argparse at import time, so ``scratchpilot --help`` is fast and
works without the optional dependencies. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CommandError

#: modules that contribute sub-commands, in help order
_COMMAND_MODULES = (
    "scratchpilot.digits.cli",
    "scratchpilot.data.cli",
    "scratchpilot.web.cli",
    "scratchpilot.car.cli",
    "scratchpilot.transfer.cli",
    "scratchpilot.tune.cli",
    "scratchpilot.report.cli",
    "scratchpilot.export.cli",
)



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchpilot",
        description="A neural network from scratch that reads handwritten digits and drives a car.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"scratchpilot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that application is not written yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except CommandError as exc:
        print(f"scratchpilot: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (disk full, a folder gone): its message names the file
        print(f"scratchpilot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nscratchpilot: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
