"""Evaluate an expression in a floating-point format, showing every rounding step.

Each number is first rounded to the format; each operation (+ - * /, sqrt(),
fma(a, b, c)) takes the rounded operands, computes the exact result and rounds
it once.  For every step: the exact value, the stored value with its bits
(as 'fpsim bits' shows them) and the rounding error.  Powers of literals
(2**-9) are exact numbers.  Nothing is evaluated as Python code.

Examples:
  fpsim calc "1 + 2**-9" --format bf16        1 + 2^-9 is a tie in BF16: rounds to even, 1.0
  fpsim calc "0.1 + 0.2" --format fp16
  fpsim calc "fma(3, 683/2048, 2**-100)" --format tf32
  fpsim calc "sqrt(2) * sqrt(2)" --format e5m2 --mode up
  fpsim calc "1 + 2**-10" --format bf16 --mode stochastic --seed 3
"""

from decimal import Decimal, localcontext

from ..numerics.bits import anatomy
from ..ops.calc import evaluate, show_number
from ..numerics.exact import ROUNDING_MODES, WIDE, format_real


def configure(parser):
    parser.add_argument("expression", help="e.g. '1 + 2**-9', 'sqrt(2)', 'fma(0.1, 10, -1)' (quote it)")
    parser.add_argument("--format", "-f", default="fp32", metavar="F",
                        help="format name, alias or eXmY (default fp32)")
    parser.add_argument("--mode", "-m", default="nearest", choices=list(ROUNDING_MODES), help="rounding mode")
    parser.add_argument("--seed", type=int, default=None, help="random seed for --mode stochastic")


def _error_text(error, exact) -> str:
    if error is None:
        return "-"
    if error == 0:
        return "0 (exact)"
    if isinstance(exact, Decimal):  # an approximation of an irrational value: relative error near 0 means little
        return f"~ {format_real(error)}"
    with localcontext(WIDE):
        relative = f", relative {format_real(error / exact, '+.3g')}" if exact != 0 else ""
    return f"{format_real(error)}{relative}"


def run(args) -> int:
    evaluation = evaluate(args.expression, args.format, args.mode, rng=args.seed)
    print(f"{evaluation.expression}  in {evaluation.fmt.name}, rounding {evaluation.mode}")
    for number, step in enumerate(evaluation.steps, 1):
        approx = "~ " if step.exact_is_approximate else ""
        print(f"  [{number}] {step.text}")
        print(f"      exact   {approx}{show_number(step.exact)}")
        print(f"      stored  {anatomy(step.rounded, evaluation.fmt)}")
        print(f"      error   {_error_text(step.error, step.exact)}")
    exact = evaluation.exact
    approx = "~ " if isinstance(exact, Decimal) else ""
    print(f"result {show_number(evaluation.result)}   exact value of the expression {approx}{show_number(exact)}"
          f"   total error {_error_text(evaluation.error, exact)}")
    return 0
