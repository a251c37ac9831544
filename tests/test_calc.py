"""fpsim.ops.calc (the expression evaluator) and the ``fpsim calc`` command."""

import math
from fractions import Fraction

import pytest

import fpsim
from fpsim.ops.calc import evaluate, parse, show_number
from fpsim.cli import main
from fpsim.numerics.exact import round_exact


def test_one_plus_two_to_the_minus_nine_in_bf16_is_a_tie_that_rounds_to_even():
    evaluation = evaluate("1 + 2**-9", "bf16")
    assert [s.rounded for s in evaluation.steps] == [1.0, 2.0 ** -9, 1.0]
    last = evaluation.steps[-1]
    assert last.exact == 1 + Fraction(1, 512) and last.error == -Fraction(1, 512)
    assert evaluation.exact == 1 + Fraction(1, 512) and evaluation.result == 1.0
    assert evaluate("1 + 2**-9", "bf16", "up").result == 1 + 2.0 ** -7


def test_literals_keep_their_exact_decimal_value_and_round_once():
    step = evaluate("0.1", "fp16").steps[0]
    assert step.exact == Fraction(1, 10)
    assert step.rounded == round_exact(Fraction(1, 10), "fp16")  # not via the double nearest 0.1
    assert step.error == Fraction(step.rounded) - Fraction(1, 10)


def literal(text, fmt, mode):
    return round_exact(Fraction(text), fmt, mode)


@pytest.mark.parametrize("expression, fmt, mode, by_hand", [
    ("(0.1 + 0.2) * 3 - 1/3", "fp16", "nearest",
     lambda f, m, n: fpsim.sub(fpsim.mul(fpsim.add(n("0.1"), n("0.2"), f, m), n("3"), f, m),
                               fpsim.div(n("1"), n("3"), f, m), f, m)),
    ("sqrt(2) / -7 + 65504", "fp16", "up",
     lambda f, m, n: fpsim.add(fpsim.div(fpsim.sqrt(n("2"), f, m), -n("7"), f, m), n("65504"), f, m)),
    ("1e-7 * 1e-3", "fp16", "toward_zero", lambda f, m, n: fpsim.mul(n("1e-7"), n("1e-3"), f, m)),
    ("fma(0.1, 10, -1)", "bf16", "down", lambda f, m, n: fpsim.fma(n("0.1"), n("10"), n("-1"), f, m)),
])
def test_each_step_is_the_library_operation_on_the_rounded_operands(expression, fmt, mode, by_hand):
    want = by_hand(fmt, mode, lambda text: literal(text, fmt, mode))
    assert evaluate(expression, fmt, mode).result == want


def test_fma_is_one_rounding():
    # 3 * 683/2048 = 2049/2048 is a TF32 midpoint; + 2^-100 tips it up; a*b rounded first would tie to even
    evaluation = evaluate("fma(3, 683/2048, 2**-100)", "tf32")
    assert evaluation.result == 1 + 2.0 ** -10
    assert evaluate("3 * (683/2048) + 2**-100", "tf32").result == 1.0


def test_square_roots_report_an_approximate_exact_value():
    step = evaluate("sqrt(2)", "bf16").steps[-1]
    assert step.exact_is_approximate and abs(float(step.exact) - 2 ** 0.5) < 1e-15
    assert not evaluate("sqrt(0.25)", "bf16").steps[-1].exact_is_approximate


def test_special_values():
    assert evaluate("1/0", "fp16").result == float("inf")
    nan = evaluate("sqrt(-1)", "fp16")
    assert nan.result != nan.result and nan.exact is None and nan.error is None
    assert evaluate("60000 + 60000", "fp16").result == float("inf")


def test_show_number():
    assert show_number(Fraction(3, 10)) == "0.3"
    assert show_number(Fraction(1, 512)) == "0.001953125"
    assert show_number(Fraction(1, 3)).startswith("~ 0.33333")
    assert show_number(None) == "not a real number"


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "not allowed"),
    ("x + 1", "unknown name"),
    ("1 +", "cannot parse"),
    ("2 ** 0.5", "integer"),
    ("(1 + 2) ** 2", "literal"),
    ("sqrt(1, 2)", "argument"),
    ("2 ** 100000", "at most"),
    ("'1' + 1", "not allowed"),
    ("", "empty"),
    ("1; 2", "cannot parse"),
])
def test_bad_expressions_are_refused_without_evaluating_them(expression, message):
    with pytest.raises(ValueError, match=message):
        parse(expression)


def test_cli_shows_steps_bits_and_errors(capsys):
    assert main(["calc", "1 + 2**-9", "--format", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "[3] 1.0 + 0.001953125" in out
    assert fpsim.numerics.bits.anatomy(1.0, "bf16") in out
    assert "exact   1.001953125" in out and "relative -0.00195" in out


def test_cli_bad_input_is_one_line_and_status_2(capsys):
    assert main(["calc", "import os"]) == 2
    assert main(["calc", "1 + 1", "--format", "fp17"]) == 2
    assert main(["calc", "1 + 2**-10", "--mode", "stochastic"]) == 2  # needs --seed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("fpsim: error:") for line in err)


def test_cli_stochastic_is_reproducible_with_a_seed(capsys):
    outputs = set()
    for _ in range(2):
        main(["calc", "1 + 2**-10 + 2**-12", "--format", "bf16", "--mode", "stochastic", "--seed", "3"])
        outputs.add(capsys.readouterr().out)
    assert len(outputs) == 1


@pytest.mark.parametrize("text, expected", [("-0.0", -0.0), ("1/-0.0", -math.inf), ("sqrt(-0.0)", -0.0),
                                            ("(-0.0)**3", -0.0), ("(-0.0)**2", 0.0), ("-(0.0) + 0.0", 0.0)])
def test_negative_zero_literals_keep_their_sign(text, expected):
    result = evaluate(text, "fp16").result
    assert result == expected and math.copysign(1, result) == math.copysign(1, expected)


def test_long_decimals_are_not_rounded_through_float64():
    # float64 rounds this to 1 + 2^-11, an FP16 midpoint, which ties to 1.0; the exact value is above it
    assert evaluate("1.00048828125000000000001", "fp16").result == 1 + 2.0**-10
    assert evaluate("1.00048828125", "fp16").result == 1.0


def test_literals_beyond_float64_overflow_however_large():
    evaluation = evaluate("1e999", "fp32")
    assert evaluation.result == math.inf and evaluation.exact == 10**999
    assert show_number(evaluation.exact) == "1E+999"
    assert evaluate("1e99999", "fp32").result == math.inf
    assert evaluate("1e300**4096", "fp32").result == math.inf
    assert evaluate("1e999999999", "fp32", "toward_zero").result == fpsim.FP32.max  # at once, not expanded
    assert evaluate("-1e-999999999", "fp16", "down").result == -fpsim.FP16.smallest_subnormal
    assert evaluate("2**-4096", "fp64").result == 0.0
    with pytest.raises(ValueError, match="at most 4096"):
        evaluate("2**1e999999999", "fp32")


@pytest.mark.parametrize("text", ["(" * 300 + "1" + ")" * 300, "-" * 100000 + "1", "-" * 3000 + "1"],
                         ids=["parentheses", "100000-minus", "3000-minus"])
def test_deep_nesting_is_a_clear_error(text):
    with pytest.raises(ValueError, match="nested too deeply|cannot parse"):
        evaluate(text, "fp16")
