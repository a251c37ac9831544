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

COMMANDS = ("formats", "bits", "validate", "report", "sweep", "train", "calc", "inspect", "hardware")
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
        status = args.run(args)
        sys.stdout.flush()  # a full disk shows here, as one line, not as a traceback at exit
        return status
    except BrokenPipeError:  # output piped into a reader that stopped (| head)
        _drop_stdout()
        return 0
    except (UsageError, ValueError, TypeError, OSError, RecursionError) as error:
        if os.environ.get("FPSIM_DEBUG"):  # show the traceback when debugging fpsim itself
            raise
        if isinstance(error, RecursionError):
            error = "the input is nested too deeply"
        elif isinstance(error, OSError):  # a file system refusal (permissions, a full disk): the user's to fix
            _drop_stdout()
        print(f"fpsim: error: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fpsim: interrupted", file=sys.stderr)
        return 130


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that output still buffered is not flushed (and refused again) at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured in tests): nothing is flushed at exit
        pass


if __name__ == "__main__":
    sys.exit(main())
