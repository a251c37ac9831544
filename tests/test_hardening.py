"""Hardening (issue 11): huge or long numbers answer at once and round correctly, and the other defect classes."""

import math
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

import fpsim
from fpsim.cli import main
from fpsim.numerics.exact import (BINADE_LIMIT, DETERMINISTIC_MODES, MAX_DIGITS, format_real, overflow_result,
                                  parse_real, round_exact)
from fpsim.ops.calc import evaluate

FORMATS = ["fp16", "bf16", "e4m3", "e5m2", "fp32", "fp64", "e3m2"]


def _exact(mantissa: int, exponent: int) -> Fraction:
    return Fraction(mantissa) * Fraction(10) ** exponent


@settings(max_examples=300, deadline=None)
@given(st.integers(-10**30, 10**30), st.integers(-1200, 1200), st.sampled_from(FORMATS),
       st.sampled_from(DETERMINISTIC_MODES))
def test_text_rounds_as_the_exact_fraction_for_moderate_exponents(mantissa, exponent, fmt, mode):
    text = f"{mantissa}e{exponent}"
    expected = round_exact(_exact(mantissa, exponent), fmt, mode) if mantissa else 0.0
    got = float(fpsim.round(parse_real(text), fmt, mode))
    assert got == expected or (math.isnan(got) and math.isnan(expected))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.integers(BINADE_LIMIT // 3 + 10, 10**18), st.booleans(),
       st.sampled_from(FORMATS), st.sampled_from(DETERMINISTIC_MODES), st.booleans())
def test_text_beyond_every_range_follows_the_modes_rule(mantissa, exponent, negative, fmt, mode, tiny):
    text = f"{'-' if negative else ''}{mantissa}e{'-' if tiny else ''}{exponent}"
    got = float(fpsim.round(parse_real(text), fmt, mode))
    f = fpsim.get_format(fmt)
    if not tiny:
        expected = overflow_result(negative, f, mode, False)
    else:  # below half the smallest subnormal: zero of the input's sign, or the smallest subnormal toward +-inf
        away = (mode == "up" and not negative) or (mode == "down" and negative)
        expected = (f.smallest_subnormal if away and f.subnormals else 0.0) * (-1 if negative else 1)
        expected = math.copysign(expected, -1 if negative else 1)
    assert got == expected or (math.isnan(got) and math.isnan(expected))
    assert math.copysign(1, got) == math.copysign(1, expected) or math.isnan(expected)


def test_stochastic_rounding_of_a_tiny_text_rounds_up_only_below_every_uniform_step():
    tiny = parse_real("1e-999999999")
    assert round_exact(tiny, "fp16", "stochastic", uniform=Fraction(0)) == fpsim.FP16.smallest_subnormal
    assert round_exact(tiny, "fp16", "stochastic", uniform=Fraction(1, 2**63)) == 0.0


@pytest.mark.parametrize("fmt", ["fp64", "fp16", "bf16"])
@pytest.mark.parametrize("side", [-1, 0, 1])
def test_digits_beyond_max_digits_round_as_the_full_number(fmt, side):
    # a tie between two neighbours of the format, written out in full, then nudged by 10^-(3 MAX_DIGITS)
    midpoint = Fraction(1) + Fraction(1, 2 ** (fpsim.get_format(fmt).mantissa_bits + 1))
    places = 3 * MAX_DIGITS
    scaled = midpoint * 10 ** places + side
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        digits = str(scaled.numerator)
    finally:
        sys.set_int_max_str_digits(limit)
    text = f"{digits[:-places]}.{digits[-places:]}"
    assert len(text) > MAX_DIGITS
    exact = scaled / 10 ** places
    for mode in DETERMINISTIC_MODES:
        assert float(fpsim.round(parse_real(text), fmt, mode)) == round_exact(exact, fmt, mode)


def test_a_5000_digit_number_is_a_number():
    text = "7" * 5000
    assert fpsim.round(parse_real(text), "fp64") == math.inf
    assert "from 0.7777" in fpsim.describe("0." + text, "fp16")
    assert main(["bits", "0." + "3" * 5000, "-f", "fp16"]) == 0


def test_round_takes_python_ints_of_any_size_in_lists():
    assert list(fpsim.round([10**400, 1], "fp64")) == [math.inf, 1.0]
    assert list(fpsim.round([2**70 + 1, Fraction(1, 3), Decimal("0.1")], "bf16", "up")) == \
        [round_exact(2**70 + 1, "bf16", "up"), round_exact(Fraction(1, 3), "bf16", "up"),
         round_exact(Fraction(1, 10), "bf16", "up")]
    with pytest.raises(TypeError, match="real numbers"):
        fpsim.round([1, "a"], "fp16")


def test_tiny_errors_keep_their_magnitude():
    text = fpsim.describe("1e-400", "fp16")
    assert "error -1e-400 from 1e-400, relative -1" in text
    assert format_real(Fraction(-1, 10**400)) == "-1e-400"
    assert format_real(Fraction(10**400), "+.3g") == "+1e+400"


@pytest.mark.parametrize("command", [["bits", "1e999999999", "-f", "fp16"], ["bits", "-f", "fp16", "--", "-1e-999999999"],
                                     ["calc", "1e999999999"], ["calc", "1e-999999999"],
                                     ["calc", "2**1e999999999"], ["calc", "1e9999999999999999999999999"]])
def test_huge_exponents_answer_at_once(command):
    done = subprocess.run([sys.executable, "-m", "fpsim", *command], capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 2) and "Traceback" not in done.stderr


def test_describe_huge_text():
    assert "= inf" in fpsim.describe("1e999999999", "fp16")
    assert "= 65504.0" in fpsim.describe("1e999999999", "fp16", "toward_zero")


def test_a_flat_sum_of_1000_terms_is_evaluated():
    evaluation = evaluate("+".join(["1"] * 1000), "fp32")
    assert evaluation.result == 1000.0 and len(evaluation.steps) == 1999


def test_calc_reads_long_integer_literals():
    assert evaluate("1" + "0" * 5000, "fp32").result == math.inf
    assert evaluate("0x10 + 0b11", "fp32").result == 19.0
