"""Optimizers and the rounding of their updates into the stored weights.

An optimizer turns the FP32 gradient ``g`` of one parameter into an update
``u`` (the amount to subtract); its state lives in the policy's
``optimizer_state`` format, rounded to nearest after every change.  The update
itself is computed in float64 and rounded once, when it is applied
(``apply_update``), so the only rounding that decides whether a small update
survives is the one into the weights' format: the effect the recipe's master
weights are there to prevent.

``grad_scale`` (see ``fpsim.train``) multiplies the loss, hence every gradient;
each optimizer is made invariant to it, so that in exact arithmetic the
trajectory does not depend on it: SGD and momentum divide the learning rate by
it, Adam multiplies its epsilon by it.
"""

from __future__ import annotations

import numpy as np

from ..numerics.formats import Format
from ..numerics.rounding import round as round_to
from ..numerics.checks import is_finite_number


class SGD:
    """Plain stochastic gradient descent: ``u = (lr / grad_scale) g``; no state."""

    def __init__(self, lr: float, *, grad_scale: float = 1.0, state_format: Format):
        self.step_size = lr / grad_scale
        self.state_format = state_format

    def update(self, key, grad: np.ndarray) -> np.ndarray:
        """The update of parameter ``key`` for gradient ``grad`` (float64)."""
        return self.step_size * grad.astype(np.float64)


class Momentum:
    """SGD with momentum, as ``torch.optim.SGD(momentum=mu)`` (no dampening).

    ``v <- round(mu v + g)`` in the state format (``v = g`` on the first step),
    ``u = (lr / grad_scale) v``.
    """

    def __init__(self, lr: float, *, grad_scale: float = 1.0, state_format: Format, momentum: float = 0.9):
        if not (is_finite_number(momentum) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.step_size = lr / grad_scale
        self.momentum = float(momentum)
        self.state_format = state_format
        self.velocity: dict = {}

    def update(self, key, grad: np.ndarray) -> np.ndarray:
        """The update of parameter ``key``; advances its momentum buffer."""
        grad = grad.astype(np.float64)
        if key in self.velocity:
            grad = self.momentum * self.velocity[key].astype(np.float64) + grad
        self.velocity[key] = round_to(grad, self.state_format)
        return self.step_size * self.velocity[key].astype(np.float64)


class Adam:
    """Adam (Kingma and Ba), as ``torch.optim.Adam``, its moments in the state format.

    ``m <- round(b1 m + (1 - b1) g)``, ``v <- round(b2 v + (1 - b2) g^2)``,
    ``u = lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps * grad_scale)``
    with ``t`` the parameter's number of updates so far (skipped steps do not count).
    """

    def __init__(self, lr: float, *, grad_scale: float = 1.0, state_format: Format,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                or not all(is_finite_number(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not (is_finite_number(eps) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        self.lr = lr
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = eps * grad_scale
        self.state_format = state_format
        self.moments: dict = {}

    def update(self, key, grad: np.ndarray) -> np.ndarray:
        """The update of parameter ``key``; advances its moments."""
        grad = grad.astype(np.float64)
        t, m, v = self.moments.get(key, (0, 0.0, 0.0))
        t += 1
        m = round_to(self.beta1 * np.asarray(m, dtype=np.float64) + (1 - self.beta1) * grad, self.state_format)
        v = round_to(self.beta2 * np.asarray(v, dtype=np.float64) + (1 - self.beta2) * grad * grad,
                     self.state_format)
        self.moments[key] = (t, m, v)
        m_hat = m.astype(np.float64) / (1 - self.beta1 ** t)
        v_hat = v.astype(np.float64) / (1 - self.beta2 ** t)
        return self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def make_optimizer(name: str, lr: float, *, grad_scale: float = 1.0, state_format: Format, **options):
    """The optimizer called ``name`` (one of the MLP's, ``fpsim.sim.vocabulary.MODELS["mlp"].optimizers``) with its
    ``options``.

    Options: ``momentum`` (for "momentum", default 0.9); ``betas`` and ``eps``
    (for "adam", defaults (0.9, 0.999) and 1e-8).
    """
    classes = {"sgd": SGD, "momentum": Momentum, "adam": Adam}  # MODELS["mlp"].optimizers
    if not isinstance(name, str) or name.lower() not in classes:
        raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(classes)}")
    if not (is_finite_number(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
    if not (is_finite_number(grad_scale) and grad_scale > 0):
        raise ValueError(f"grad_scale must be a positive finite number, got {grad_scale!r}")
    accepted = {"sgd": (), "momentum": ("momentum",), "adam": ("betas", "eps")}[name.lower()]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"option(s) {', '.join(unknown)} do not apply to optimizer {name!r} "
                         f"(it takes {', '.join(accepted) or 'no options'})")
    return classes[name.lower()](lr, grad_scale=grad_scale, state_format=state_format, **options)


def apply_update(weights: np.ndarray, update: np.ndarray, fmt: Format, *, rounding: str = "nearest",
                 rng=None) -> np.ndarray:
    """The stored weights after the update: ``round(w - u)`` to ``fmt``, once.

    ``rounding="nearest"`` loses an update (the result is ``w`` again) smaller
    than half the spacing of ``fmt`` at ``w``.  With p the precision (11 for FP16,
    8 for BF16) and e = floor(log2|w|) (e = emin for a subnormal w or 0), the
    spacing is 2^(e - p + 1), so u is lost when |u| < 2^(e - p), and at
    |u| = 2^(e - p) exactly when w's last significand bit is 0 (the tie goes to
    the even neighbour).  One exception: for w = +-2^e with e > emin and u moving
    w towards zero, the spacing below w is 2^(e - p), and u is lost when
    |u| <= 2^(e - p - 1).  For w = m 2^e (1 <= m < 2) the bound 2^(e - p) is
    |w| 2^-p / m, not |w| 2^-p (``fpsim.report.lost_updates``).  ``"stochastic"`` rounds
    up or down with probabilities that make the stored value right on average,
    so small updates survive in expectation.
    """
    return round_to(weights.astype(np.float64) - update, fmt, rounding, rng=rng)


def apply_kahan_update(weights: np.ndarray, compensation: np.ndarray, update: np.ndarray,
                       fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """Kahan-compensated update in ``fmt``; returns the new weights and compensation.

    The compensation ``c`` holds what earlier roundings failed to apply (as the
    Kahan-summation BF16 optimizers of optimi and torchao do), every value
    rounded to nearest in ``fmt``::

        pending = round(c - u)              # this update plus what is owed
        w_new   = round(w + pending)
        c_new   = round(pending - (w_new - w))   # w_new - w is exact

    An update too small to move ``w`` accumulates in ``c`` until it does.
    """
    pending = round_to(compensation.astype(np.float64) - update, fmt)
    new_weights = round_to(weights.astype(np.float64) + pending, fmt)
    applied = new_weights.astype(np.float64) - weights
    return new_weights, round_to(pending - applied, fmt)
