"""Show how a value is stored: sign | exponent | mantissa, the stored value and the rounding error.

Examples:
  fpsim bits 0.1                      FP32, FP16 and BF16 side by side
  fpsim bits 65520 --format fp16      a tie at the top of FP16: rounds to inf
  fpsim bits 1e-8 --format fp16 --mode up
  fpsim bits 300 --format e6m9        any eXmY format
  fpsim bits 1/3 --format bf16        an exact ratio
  fpsim bits -f fp16 -- -1e-5         a negative number with an exponent goes after --
"""

from ..numerics.bits import describe
from ..numerics.exact import ROUNDING_MODES, parse_real
from ..numerics.formats import get_format

DEFAULT_FORMATS = ("fp32", "fp16", "bf16")


def configure(parser):
    parser.add_argument("value", help="a number, e.g. 0.1, -3e-6, 65504, 1/3, inf, nan; decimals are taken "
                                      "at their exact value and rounded once (not through float64)")
    parser.add_argument("--format", "-f", action="append", dest="formats", metavar="F",
                        help="format name, alias or eXmY (repeatable); default: fp32, fp16 and bf16")
    parser.add_argument("--mode", "-m", default="nearest", choices=list(ROUNDING_MODES), help="rounding mode")
    parser.add_argument("--seed", type=int, default=0, help="seed for --mode stochastic (default 0)")


def run(args) -> int:
    parse_real(args.value)  # a clear error before any output
    formats = [get_format(f) for f in (args.formats or DEFAULT_FORMATS)]
    width = max(len(f.name) for f in formats)
    for fmt in formats:
        print(f"{fmt.name:<{width}}  {describe(args.value, fmt, args.mode, rng=args.seed)}")
    return 0
