"""A floating-point calculator: evaluate a small expression in a format, one rounding at a time.

The grammar (parsed with Python's ``ast``, never evaluated as code): decimal
numbers (``0.1``, ``3e-5``), ``+ - * /``, parentheses, unary minus,
``sqrt(x)``, ``fma(a, b, c)`` (a*b + c with one rounding) and powers of
literals (``2**-9``, ``(-3)**2``: computed exactly, then used as a number).

Every literal is first rounded to the format (its exact decimal value is kept
to show the error); every operation takes the rounded operands, computes its
exact result and rounds it once (``fpsim.add`` and friends).  Unary minus is
exact and is not a step.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

from . import arithmetic
from ..numerics.exact import BINADE_LIMIT, WIDE, check_mode, decimal_value, parse_real, round_exact
from ..numerics.formats import Format, get_format

MAX_POWER = 4096
"""Largest |exponent| accepted in a power of literals (2**-1074 needs 1074)."""

MAX_POWER_BITS = 1 << 20
"""A power of literals is computed exactly when that takes at most this many bits, else to 50 digits if that
places it beyond every format's range (where its digits do not matter), else refused."""

_OPERATORS = {ast.Add: ("+", "add"), ast.Sub: ("-", "sub"), ast.Mult: ("*", "mul"), ast.Div: ("/", "div")}
_FUNCTIONS = {"sqrt": 1, "fma": 3}
_PLACEHOLDER = re.compile(r"\b_(\d+)\b")  # the name a number literal stands as in the parsed text


@dataclass(frozen=True)
class Step:
    """One rounding: ``text`` (what was computed), its ``exact`` value (None if not a real number, e.g.
    inf - inf; an approximation when ``exact_is_approximate``, for irrational square roots) and the ``rounded``
    value stored in the format."""

    text: str
    exact: Fraction | Decimal | None
    rounded: float
    exact_is_approximate: bool = False

    @property
    def error(self) -> Fraction | Decimal | None:
        """rounded - exact, when both are finite."""
        if self.exact is None or not math.isfinite(self.rounded):
            return None
        rounded = Decimal(self.rounded) if isinstance(self.exact, Decimal) else Fraction(self.rounded)
        with localcontext(WIDE):
            return rounded - self.exact


@dataclass(frozen=True)
class Evaluation:
    """The steps in the order made, the final stored value, and the expression's value in exact arithmetic
    (``Decimal`` to 50 digits when a square root makes it irrational; None when it is not a real number)."""

    expression: str
    fmt: Format
    mode: str
    steps: list
    result: float
    exact: Fraction | Decimal | None

    @property
    def error(self) -> Fraction | Decimal | None:
        """result - exact, when both are finite (a Decimal approximation once a square root is involved)."""
        return Step(self.expression, self.exact, self.result).error


def parse(text: str) -> ast.expr:
    """The checked syntax tree of ``text``; ValueError naming what is not allowed.

    Number literals are read by ``parse_real`` (exactly, with work bounded by their
    length), not by Python's parser: each stands in the tree as a name ``_N``
    carrying its text (``literal_text``) and value (``exact_value``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty expression: give something like '1 + 2**-9'")
    try:
        source, numbers = _numbers_as_names(text.strip())
        tree = ast.parse(source, mode="eval").body
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and _PLACEHOLDER.fullmatch(node.id):
                node.literal_text = numbers[int(node.id[1:])]
                node.exact_value = _number(node.literal_text)
        _check(tree)
    except SyntaxError as error:
        raise ValueError(f"cannot parse {text!r}: {error.msg}") from None
    except (RecursionError, MemoryError):
        raise ValueError("expression nested too deeply") from None
    return tree


def _numbers_as_names(source: str) -> tuple[str, list[str]]:
    """``source`` with its number literals replaced by the names ``_0``, ``_1``, ... and their texts."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError) as error:
        raise SyntaxError(str(error.args[0])) from None
    starts = [0]
    for line in io.StringIO(source):
        starts.append(starts[-1] + len(line))
    numbers, pieces, position = [], [], 0
    for token in tokens:
        if token.type == tokenize.NAME and _PLACEHOLDER.fullmatch(token.string):
            raise ValueError(f"unknown name {token.string!r}: use numbers, + - * /, sqrt(), fma() and powers of "
                             "literals")
        if token.type == tokenize.NUMBER:
            begin, end = (starts[row - 1] + column for row, column in (token.start, token.end))
            pieces += [source[position:begin], f"(_{len(numbers)})"]
            numbers.append(token.string)
            position = end
    return "".join(pieces) + source[position:], numbers


def _number(text: str) -> Fraction | Decimal:
    """The exact value of a number literal (a Decimal when it lies beyond 2^+-BINADE_LIMIT)."""
    if text[-1:] in "jJ":
        raise ValueError(f"{text}: complex numbers are not allowed")
    if text[:2].lower() in ("0x", "0o", "0b"):
        if len(text) > BINADE_LIMIT // 8:
            raise ValueError(f"{text[:20]}...: hexadecimal, octal and binary literals have at most "
                             f"{BINADE_LIMIT // 8} digits")
        return Fraction(int(text, 0))
    value = parse_real(text)
    return Fraction(0) if isinstance(value, float) else value  # an unsigned literal's float is +0


def _source(node) -> str:
    """``node`` as the user wrote it (its numbers as written)."""
    texts = {n.id: n.literal_text for n in ast.walk(node) if hasattr(n, "literal_text")}
    return _PLACEHOLDER.sub(lambda match: texts.get(match[0], match[0]), ast.unparse(node))


def _chain(node) -> tuple[ast.expr, list[ast.BinOp]]:
    """A left-nested chain ``a op b op c ...`` (as Python parses a flat sum): its first operand and its
    operations in the order made, so that long flat sums are walked without recursion."""
    links = []
    while isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        links.append(node)
        node = node.left
    return node, links[::-1]


def _check(node) -> None:
    if _is_literal(node):
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        first, links = _chain(node)
        _check(first)
        for link in links:
            _check(link.right)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        raise ValueError("powers are allowed of literal numbers only, with an integer exponent, e.g. 2**-9")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check(node.operand)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords or len(node.args) != _FUNCTIONS[node.func.id]:
            raise ValueError(f"{node.func.id}() takes {_FUNCTIONS[node.func.id]} argument(s)")
        for argument in node.args:
            _check(argument)
    elif isinstance(node, ast.Name):
        raise ValueError(f"unknown name {node.id!r}: use numbers, + - * /, sqrt(), fma() and powers of literals")
    else:
        raise ValueError(f"not allowed in an expression: {_source(node)!r} "
                         "(use numbers, + - * /, sqrt(), fma(), parentheses and powers of literals)")


def _is_number(node) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _is_number(node.operand)
    return hasattr(node, "exact_value")


def _is_literal(node) -> bool:
    """A number, a signed number, or a power of those with an integer exponent."""
    if _is_number(node):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _is_number(node.left) \
            and _is_number(node.right):
        exponent = _literal_value(node.right)
        if not isinstance(exponent, Fraction) or exponent.denominator != 1 or abs(exponent) > MAX_POWER:
            raise ValueError(f"exponent {_source(node.right)} must be an integer of at most {MAX_POWER} "
                             "in magnitude")
        return True
    return False


def _literal_value(node) -> Fraction | Decimal:
    """The exact value of a literal, from its source digits (0.1 is 1/10, not the nearest double); a Decimal
    for one beyond 2^+-BINADE_LIMIT (parse_real)."""
    if isinstance(node, ast.UnaryOp):
        value = _literal_value(node.operand)
        if isinstance(node.op, ast.UAdd):
            return value
        return value.copy_negate() if isinstance(value, Decimal) else -value
    if isinstance(node, ast.BinOp):
        return _power(node, _literal_value(node.left), int(_literal_value(node.right)))
    return node.exact_value


def _power(node, base: Fraction | Decimal, exponent: int) -> Fraction | Decimal:
    """base ** exponent: exactly when it takes at most ``MAX_POWER_BITS``, else (to 50 digits) only beyond
    every format's range."""
    if base == 0 and exponent < 0:
        raise ValueError(f"{_source(node)}: zero to a negative power")
    if isinstance(base, Fraction) and \
            (base.numerator.bit_length() + base.denominator.bit_length()) * abs(exponent) <= MAX_POWER_BITS:
        return base ** exponent
    with localcontext(WIDE):
        value = _as_decimal(base) ** exponent
    if not isinstance(decimal_value(value), Decimal):
        raise ValueError(f"{_source(node)}: too long to compute exactly (a power of at most "
                         f"{MAX_POWER_BITS} bits is)")
    return value


def _is_negative_literal(node) -> bool:
    """Whether a literal's signs make it negative: decides the sign of a zero (-0.0 is -0, as in IEEE 754)."""
    if isinstance(node, ast.UnaryOp):
        inner = _is_negative_literal(node.operand)
        return not inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):  # a power: negative when the base is and the exponent is odd
        return _is_negative_literal(node.left) and _literal_value(node.right) % 2 == 1
    return False


def evaluate(text: str, fmt, mode: str = "nearest", *, rng=None) -> Evaluation:
    """Evaluate ``text`` in ``fmt`` and ``mode`` step by step (``rng`` for mode "stochastic")."""
    fmt = get_format(fmt)
    mode = check_mode(mode)
    if mode == "stochastic":
        if rng is None:
            raise ValueError("stochastic rounding needs a seed")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    tree = parse(text)
    steps: list[Step] = []
    try:
        result = _evaluate(tree, fmt, mode, rng, steps)
        with localcontext(WIDE):
            exact = _exact_value(tree)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    return Evaluation(text.strip(), fmt, mode, steps, result, exact)


def _evaluate(node, fmt, mode, rng, steps) -> float:
    if _is_literal(node):
        value = _literal_value(node)
        rounded = _round_literal(value, fmt, mode, rng)
        if value == 0 and _is_negative_literal(node):
            rounded = -0.0
        steps.append(Step(_source(node), value, rounded))
        return rounded
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, fmt, mode, rng, steps)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        first, links = _chain(node)
        x = _evaluate(first, fmt, mode, rng, steps)
        for link in links:
            symbol, name = _OPERATORS[type(link.op)]
            y = _evaluate(link.right, fmt, mode, rng, steps)
            rounded = float(getattr(arithmetic, name)(x, y, fmt, mode, rng=rng))
            steps.append(Step(f"{x!r} {symbol} {y!r}", _exact_operation(name, x, y), rounded))
            x = rounded
        return x
    name = node.func.id
    args = [_evaluate(argument, fmt, mode, rng, steps) for argument in node.args]
    rounded = float(getattr(arithmetic, name)(*args, fmt, mode, rng=rng))
    if name == "sqrt":
        exact, approximate = _exact_sqrt(args[0])
        steps.append(Step(f"sqrt({args[0]!r})", exact, rounded, approximate))
    else:
        steps.append(Step(f"fma({args[0]!r}, {args[1]!r}, {args[2]!r})", _exact_fma(*args), rounded))
    return rounded


def _round_literal(value: Fraction, fmt, mode, rng) -> float:
    """Round an exact rational literal once, with the exact reference (uniform from ``rng`` if stochastic)."""
    uniform = Fraction(int(rng.integers(0, 1 << 63)), 1 << 63) if mode == "stochastic" else None
    return round_exact(value, fmt, mode, uniform=uniform)


def _exact_operation(name: str, x: float, y: float) -> Fraction | None:
    if not (math.isfinite(x) and math.isfinite(y)) or (name == "div" and y == 0):
        return None
    a, b = Fraction(x), Fraction(y)
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b if b else None}[name]


def _exact_fma(a: float, b: float, c: float) -> Fraction | None:
    if not all(math.isfinite(v) for v in (a, b, c)):
        return None
    return Fraction(a) * Fraction(b) + Fraction(c)


def _exact_sqrt(x: float) -> tuple[Fraction | Decimal | None, bool]:
    """sqrt(x): a Fraction when it is rational, else a 50-digit Decimal (approximate: True)."""
    if not math.isfinite(x) or x < 0:
        return None, False
    value = Fraction(x)
    root = _rational_sqrt(value)
    if root is not None:
        return root, False
    with localcontext() as context:
        context.prec = 50
        return Decimal(value.numerator).sqrt() / Decimal(value.denominator).sqrt(), True


def _exact_value(node) -> Fraction | Decimal | None:
    """The expression's value in exact arithmetic (Decimal, in the caller's context, once a sqrt appears)."""
    try:
        return _exact(node)
    except (ZeroDivisionError, ArithmeticError, ValueError):
        return None


def _exact(node):
    if _is_literal(node):
        return _literal_value(node)
    if isinstance(node, ast.UnaryOp):
        value = _exact(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        first, links = _chain(node)
        x = _exact(first)
        for link in links:
            y = _exact(link.right)
            if isinstance(x, Decimal) != isinstance(y, Decimal):
                x, y = _as_decimal(x), _as_decimal(y)
            x = {ast.Add: lambda: x + y, ast.Sub: lambda: x - y, ast.Mult: lambda: x * y,
                 ast.Div: lambda: x / y}[type(link.op)]()
        return x
    args = [_exact(argument) for argument in node.args]
    if node.func.id == "fma":
        if any(isinstance(a, Decimal) for a in args):
            args = [_as_decimal(a) for a in args]
        return args[0] * args[1] + args[2]
    x = args[0]
    if x < 0:
        raise ValueError("square root of a negative number")
    root = _rational_sqrt(x) if isinstance(x, Fraction) else None
    return root if root is not None else _as_decimal(x).sqrt()


def _rational_sqrt(x: Fraction) -> Fraction | None:
    """sqrt(x) for x >= 0 when it is rational, else None: a reduced fraction's square root is rational
    exactly when its numerator and denominator are both perfect squares."""
    num_root, den_root = math.isqrt(x.numerator), math.isqrt(x.denominator)
    if num_root ** 2 == x.numerator and den_root ** 2 == x.denominator:
        return Fraction(num_root, den_root)
    return None


def _as_decimal(x) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(x.numerator) / Decimal(x.denominator)


def show_number(x) -> str:
    """A value as people read it: all its decimals when they are few (0.3, 0.001953125), else 17 digits."""
    if x is None:
        return "not a real number"
    if isinstance(x, Decimal):
        return f"{x:.17g}"
    if isinstance(x, float):
        return repr(x)
    digits = _exact_decimal(x)
    if digits is not None:
        return digits
    with localcontext() as context:
        context.prec = 17
        return "~ " + str(Decimal(x.numerator) / Decimal(x.denominator))


def _exact_decimal(x: Fraction, max_digits: int = 30) -> str | None:
    """The finite decimal expansion of ``x`` if it has one of at most ``max_digits`` significant digits
    (found with a few big-integer divisions, whatever the size of ``x``)."""
    if x == 0:
        return "0"
    twos, fives = _multiplicity(x.denominator, 2), _multiplicity(x.denominator, 5)
    if x.denominator >> twos != 5 ** fives:
        return None
    places = max(twos, fives)
    scaled = (abs(x.numerator) << (places - twos)) * 5 ** (places - fives)  # |x| * 10^places, an integer
    zeros = min(_multiplicity(scaled, 2), _multiplicity(scaled, 5))
    significand = scaled // 10 ** zeros
    if significand >= 10 ** max_digits:
        return None
    value = Decimal((int(x < 0), tuple(map(int, str(significand))), zeros - places))
    return f"{value:f}" if -30 < value.adjusted() < 30 else str(value)


def _multiplicity(n: int, p: int) -> int:
    """The largest k with p^k dividing n != 0, by repeated squaring of p."""
    count = 0
    while n % p == 0:
        power, step = p, 1
        while n % (power * power) == 0:
            power, step = power * power, step * 2
        n, count = n // power, count + step
    return count
