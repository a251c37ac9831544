"""fpsim.ops.hadamard against an exact reference (Fractions, and mpmath at 60 digits for n = 32)."""

from fractions import Fraction

import mpmath
import numpy as np
import pytest

import fpsim
from fpsim.ops.hadamard import TE_WGRAD_SIGNS, hadamard, rht_matrix, sign_vector, sylvester


def reference(x: np.ndarray, n: int, signs: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Each output of the last axis's blocks from its exact sum, rounded once to FP32 (sqrt(n) by mpmath)."""
    h = [[1]]
    while len(h) < n:  # Sylvester's construction, written out
        h = [row + row for row in h] + [row + [-v for v in row] for row in h]
    out = np.empty(x.shape, dtype=np.float32)
    mpmath.mp.dps = 60
    for index in np.ndindex(x.shape[:-1]):
        for b in range(x.shape[-1] // n):
            block = [Fraction(float(v)) for v in x[index][b * n:(b + 1) * n]]
            for j in range(n):
                weights = [h[j][i] * int(signs[j]) for i in range(n)] if inverse else \
                    [int(signs[i]) * h[i][j] for i in range(n)]
                exact = sum(w * v for w, v in zip(weights, block))
                if n in (1, 4, 16, 64, 256):
                    value = exact / int(np.sqrt(n))
                else:  # irrational unless 0: 60 digits decide the FP32 rounding
                    approx = mpmath.mpf(exact.numerator) / exact.denominator / mpmath.sqrt(n)
                    mantissa, exponent = approx.man_exp if exact else (0, 0)
                    value = (1 if exact > 0 else -1) * Fraction(mantissa) * Fraction(2) ** exponent  # man_exp: |mantissa|
                out[index + (b * n + j,)] = fpsim.round_exact(value, fpsim.FP32)
    return out


def hard_blocks(rng, n: int) -> np.ndarray:
    """Random blocks over many binades, and blocks whose exact results sit next to FP32 rounding boundaries."""
    wide = (rng.standard_normal((6, 2 * n)) * np.exp2(rng.integers(-40, 40, (6, 2 * n)))).astype(np.float32)
    near_ties = np.zeros((2, 2 * n), dtype=np.float32)
    if n == 16:
        near_ties[0, :3] = [4.0, 4.0 * 2.0**-24, 4.0 * 2.0**-80]   # 1 + 2^-24 + 2^-80: rounds up, float64 ties
        near_ties[1, :3] = [4.0, 4.0 * 2.0**-24, -4.0 * 2.0**-80]  # rounds down
    else:  # first outputs (1 + 2^-24)(1 +- 2^-70): FP32 parts of the target times sqrt(n), summing to it
        mpmath.mp.dps = 60
        for row, sign in enumerate((1, -1)):
            rest = (1 + mpmath.mpf(2)**-24) * (1 + sign * mpmath.mpf(2)**-70) * mpmath.sqrt(n)
            for i in range(4):
                near_ties[row, i] = np.float32(float(rest))
                rest -= mpmath.mpf(float(near_ties[row, i]))
    return np.concatenate([wide, near_ties])


@pytest.mark.parametrize("n", [16, 32])
@pytest.mark.parametrize("signs", [None, 7])
@pytest.mark.parametrize("inverse", [False, True])
def test_matches_the_exact_reference(n, signs, inverse):
    if signs is None and n == 16:
        signs = "te"
    rng = np.random.default_rng(n)
    x = hard_blocks(rng, n)
    assert np.array_equal(hadamard(x, n, signs, inverse=inverse), reference(x, n, sign_vector(n, signs), inverse))


def test_the_near_tie_blocks_need_the_exact_path():
    x = np.zeros(16, dtype=np.float32)
    x[:3] = [4.0, 4.0 * 2.0**-24, 4.0 * 2.0**-80]
    naive = (x.astype(np.float64) @ rht_matrix(16)).astype(np.float32)
    assert naive[0] == 1.0 and hadamard(x)[0] == np.float32(1 + 2.0**-23)
    near = hard_blocks(np.random.default_rng(0), 32)[-2:]   # n = 32: (1 + 2^-24)(1 +- 2^-70), irrational sums
    assert list(hadamard(near, 32)[:, 0]) == [np.float32(1 + 2.0**-23), np.float32(1.0)]


def test_exact_ties_of_normal_data_round_to_even():
    """Normal float32 blocks sum exactly in float64 and ~1 in 16 outputs is an FP32 midpoint: ties to even."""
    x = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
    exact = reference(x, 16, sign_vector(16, "te"), False)
    sums = (x.astype(np.float64).reshape(-1, 16) @ rht_matrix(16, "te")).reshape(x.shape)
    ties = np.abs(sums - exact) == np.abs(np.spacing(exact)) / 2
    assert ties.sum() > 20   # the case is there
    assert np.array_equal(hadamard(x, 16, "te"), exact)


def test_orthogonal_and_the_inverse_exact_where_it_should_be():
    for n in (2, 16, 32, 64):
        h = sylvester(n)
        assert np.array_equal(h @ h.T, n * np.eye(n, dtype=np.int64))
    r = rht_matrix(16, "te")
    assert np.array_equal(np.abs(r), np.full((16, 16), 0.25)) and np.array_equal(r @ r.T, np.eye(16))
    rng = np.random.default_rng(1)
    integers = rng.integers(-1000, 1000, (8, 64)).astype(np.float32)   # every forward result an FP32 number
    for signs in (None, "te", 3):
        y = hadamard(integers, 16, signs)
        assert np.array_equal(hadamard(y, 16, signs, inverse=True), integers)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    for n in (16, 32):
        back = hadamard(hadamard(x, n, 5), n, 5, inverse=True)
        np.testing.assert_allclose(back, x, rtol=0, atol=4 * np.spacing(np.abs(x).max()))
    np.testing.assert_allclose(np.linalg.norm(hadamard(x, 32), axis=1), np.linalg.norm(x, axis=1), rtol=1e-6)


def test_hand_checked_values_and_the_axis():
    assert np.array_equal(hadamard(np.ones(16, dtype=np.float32)), [4.0] + [0.0] * 15)
    unit = np.zeros(16, dtype=np.float32)
    unit[3] = 1.0   # row 3 of diag(s) H / 4: s_3 = -1
    assert np.array_equal(hadamard(unit, signs="te"), -sylvester(16)[3] / 4)
    x = np.random.default_rng(2).standard_normal((32, 3)).astype(np.float32)
    assert np.array_equal(hadamard(x, axis=0), hadamard(x.T).T)
    assert hadamard(x.astype(np.float64), axis=0).dtype == np.float32


def test_signs():
    assert tuple(sign_vector(16, "te")) == (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1) == TE_WGRAD_SIGNS
    assert np.array_equal(sign_vector(32, 11), sign_vector(32, 11))
    assert not np.array_equal(sign_vector(32, 11), sign_vector(32, 12))
    assert set(sign_vector(32, 11)) == {-1, 1}
    assert np.array_equal(sign_vector(4, [1, -1, -1, 1]), [1, -1, -1, 1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=12), "power of two"), (dict(n=32, signs="te"), "n=16"), (dict(signs="random"), "unknown signs"),
    (dict(signs=[1, 0] * 8), "values"), (dict(axis=2), "axis"),
])
def test_bad_input_gives_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hadamard(np.ones((2, 48), dtype=np.float32), **kwargs)
    with pytest.raises(ValueError, match="multiple of n=16"):
        hadamard(np.ones(20))
