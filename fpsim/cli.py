"""The ``fpsim`` command: one sub-command per module in ``fpsim.commands``.

Each command module has a docstring (its help), ``configure(parser)`` adding its
arguments, and ``run(args) -> int`` returning the exit status.  Errors a user
can fix (bad flags, unknown formats, bad values) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("formats", "bits", "validate")
"""Sub-commands, in the order ``fpsim --help`` lists them; each is ``fpsim.commands.<name>``."""


class UsageError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fpsim", description=(
        "Bit-exact simulation of floating-point formats (FP32, FP16, BF16, TF32, FP8, any eXmY) "
        "and of mixed-precision training. Run 'fpsim COMMAND --help' for each command."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"fpsim.commands.{name}")
        doc = (module.__doc__ or "").strip()
        sub = subparsers.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (UsageError, ValueError, TypeError) as error:
        print(f"fpsim: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fpsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
