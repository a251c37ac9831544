"""The numpy engine's backward passes against central finite differences, in FP64.

The FP64 shadow of a training step reuses the engine's own backward code, so a
mistake in a backward pass would show in both and go unseen there.  Here each
backward (a linear layer's dL/dW, dL/db and dL/dx; ReLU; softmax cross-entropy;
squared error; the whole MLP for both losses) is compared with
(f(t + h) - f(t - h)) / 2h, element by element, of the forward pass computed in
float64 (``Float64Compute``: no rounding).  A layer's output is reduced to a
scalar as f = sum(G * output) with a random G, so that the backward pass given
G must return df/d(input).  The truncation error of the central difference is
O(h^2) and its rounding error about 1e-16 |f| / h: with h = 1e-6 both are far
below the tolerance (relative 1e-6), while a wrong sign, a missing term or a
wrong factor is off by O(1).  Inputs to a ReLU are kept away from its kink.
"""

import numpy as np
import pytest

from fpsim.engines.mlp import MLP, Float64Compute, Linear, MeanSquaredError, SoftmaxCrossEntropy, relu, relu_backward

H = 1e-6
SCALE = 8.0  # a loss scale: the backward pass of a loss returns d(SCALE * L)/d(output)


def numerical_gradient(f, t: np.ndarray) -> np.ndarray:
    """df/dt by central differences; ``f()`` reads ``t``, which is perturbed in place and restored."""
    grad = np.zeros_like(t)
    for i in np.ndindex(t.shape):
        old = t[i]
        t[i] = old + H
        up = f()
        t[i] = old - H
        down = f()
        t[i] = old
        grad[i] = (up - down) / (2 * H)
    return grad


def assert_gradient(analytic, f, t):
    np.testing.assert_allclose(analytic, numerical_gradient(f, t), rtol=1e-6, atol=1e-8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def away_from_zero(rng, shape):
    """Standard normal values with |v| >= 0.1, so that a step of H never crosses a ReLU's kink."""
    values = rng.standard_normal(shape)
    return np.where(np.abs(values) < 0.1, np.sign(values) * 0.1 + values, values)


def test_linear_backward_gives_weight_bias_and_input_gradients(rng):
    compute, layer = Float64Compute(), Linear(1, 4, 5)
    x, W, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    G = rng.standard_normal((3, 5))

    def f():
        return np.sum(G * layer.forward(compute, x, W, b))

    dx, dW, db = layer.backward(compute, x, W, G)
    assert_gradient(dW, f, W)
    assert_gradient(db, f, b)
    assert_gradient(dx, f, x)
    assert layer.backward(compute, x, W, G, input_grad=False)[0] is None


def test_relu_backward(rng):
    z, G = away_from_zero(rng, (4, 6)), rng.standard_normal((4, 6))
    _, positive = relu(z)
    assert_gradient(relu_backward(positive, G), lambda: np.sum(G * relu(z)[0]), z)


@pytest.mark.parametrize("loss_type", [SoftmaxCrossEntropy, MeanSquaredError])
def test_loss_backward_is_the_scaled_loss_gradient(loss_type, rng):
    compute, loss = Float64Compute(), loss_type()
    z = 3 * rng.standard_normal((5, 4))
    targets = rng.integers(0, 4, 5) if loss_type is SoftmaxCrossEntropy else rng.standard_normal((5, 4))
    grad = loss.backward(compute, loss.forward(compute, z, targets), SCALE)
    assert_gradient(grad, lambda: SCALE * loss.forward(compute, z, targets).value, z)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_mlp_backward_gives_every_weight_and_bias_gradient(task, rng):
    compute, model = Float64Compute(), MLP((4, 6, 5, 3), task)
    weights = [(W, rng.standard_normal(b.shape) * 0.1) for W, b in model.init_weights(rng)]
    x = rng.standard_normal((7, 4))
    targets = rng.integers(0, 3, 7) if task == "classification" else rng.standard_normal((7, 3))
    forward = model.forward(compute, x, weights)
    for i, mask in enumerate(forward.relu_masks):  # each ReLU acts, and no input of it is near its kink
        z = forward.inputs[i] @ weights[i][0] + weights[i][1]
        assert mask.any() and not mask.all() and np.abs(z).min() > 1e-3
    loss = model.loss.forward(compute, forward.output, targets)
    grads = model.backward(compute, forward, model.loss.backward(compute, loss, SCALE))

    def f():
        return SCALE * model.loss.forward(compute, model.forward(compute, x, weights).output, targets).value

    for (dW, db), (W, b) in zip(grads, weights):
        assert_gradient(dW, f, W)
        assert_gradient(db, f, b)


def test_a_backward_pass_reads_only_its_own_forward_pass(rng):
    """The FP64 shadow runs a second forward pass before the first one's backward pass is done with."""
    compute, model = Float64Compute(), MLP((4, 6, 3))
    weights = model.init_weights(rng)
    x, other = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    labels = rng.integers(0, 3, 5)

    def gradients(forward, loss):
        return model.backward(compute, forward, model.loss.backward(compute, loss, 1.0))

    forward = model.forward(compute, x, weights)
    loss = model.loss.forward(compute, forward.output, labels)
    alone = gradients(forward, loss)
    second = model.forward(compute, other, weights)
    model.loss.forward(compute, second.output, labels[::-1])
    for (dW, db), (dW_again, db_again) in zip(alone, gradients(forward, loss)):
        assert np.array_equal(dW, dW_again) and np.array_equal(db, db_again)
