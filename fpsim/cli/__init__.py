"""The ``fpsim`` command: one sub-command per module of this package (``fpsim.cli.<name>``).

Each command module has a docstring (its help), ``configure(parser)`` adding its
arguments, and ``run(args) -> int`` returning the exit status.  Errors a user
can fix (bad flags, unknown formats, bad values) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__

COMMANDS = ("formats", "bits", "validate", "report", "sweep", "train", "calc", "inspect")
"""Sub-commands, in the order ``fpsim --help`` lists them; each is ``fpsim.cli.<name>``."""


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
    parser.add_argument("--version", action="version", version=f"fpsim {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"fpsim.cli.{name}")
        doc = (module.__doc__ or "").strip()
        summary = " ".join(doc.split("\n\n")[0].split())
        sub = subparsers.add_parser(name, help=summary, description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (UsageError, ValueError, TypeError) as error:
        if os.environ.get("FPSIM_DEBUG"):  # show the traceback when debugging fpsim itself
            raise
        print(f"fpsim: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped (| head)
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("fpsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
