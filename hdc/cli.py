"""The `hdc` command line.

Core commands (topology, plan) live here. Commands of the other packages (simulate, train,
report, ...) register themselves through the `hdc.commands` entry-point group, each a
function `register(subparsers)`, so `hdc/` never imports `simulator/`, `trainer/` or
`experiments/`. A handler returns an exit status; a `UserError` becomes one line on stderr
and status 2.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from hdc.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, no usage dump
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hdc", description="Multi-datacenter LLM training: simulate, train, compare.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    from hdc import commands  # core commands

    commands.register(sub)
    for ep in sorted(entry_points(group="hdc.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ModuleNotFoundError as e:  # an optional part that is not installed here
            if e.name and ep.value.split(":")[0].startswith(e.name):
                continue
            raise
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        rc = args.handler(args)
        return 0 if rc is None else int(rc)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
