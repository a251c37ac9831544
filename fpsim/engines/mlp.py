"""A multilayer perceptron in numpy whose every product and rounding follows a precision policy.

Each layer's forward and backward sit side by side (as in micrograd).  The
arithmetic comes from a ``Compute`` object: matrix products through
``fpsim.matmul`` (partial sums in the policy's ``accumulate`` format, or on its GPU's
tensor-core model: ``Compute._tensor_core``) and every
rounding of a tensor into its storage format through ``Compute.round``, which
shows the values before and after to the recorder.  Nothing in the model counts
or knows about the recorder.

Shapes: a batch ``x`` is (B, n_in); a layer's weights ``W`` are (n_in, n_out)
and its bias ``b`` is (n_out,); ``z = x W + b``.  Layers are numbered 0..L-1
from the input; the recorder attributes to layer i its output ``z_i``
("activations"), the gradient with respect to that output
("activation_grads") and its weight and bias gradients ("weight_grads").

Nothing keeps state between calls: a forward pass returns what its backward
pass reads (a ``ForwardPass``; a loss returns a ``LossPass``), and the backward
pass takes it as an argument.  So a second forward pass (the FP64 shadow's, an
evaluation) cannot change what the first one's backward pass sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..numerics.formats import FP32, FP64
from ..sim import tensor_core
from ..sim.policy import Policy
from ..sim.scaling import ScaledCasts
from ..ops.reductions import matmul
from ..numerics.rounding import round as round_to

FP64_POLICY = Policy(name="fp64", params=FP64, activations=FP64, gradients=FP64, accumulate=FP64,
                     optimizer_state=FP64, loss=FP64)
"""Every tensor in FP64: the exact-arithmetic shadow a policy's gradients are compared against."""


class Compute:
    """A policy's arithmetic: products accumulated in ``accumulate``, tensors rounded to their formats.

    ``recorder`` (optional) observes every rounding; without one (evaluation,
    the FP64 shadow) nothing is counted.  ``casts``: under a policy with a
    scaling recipe (FP8 / MX), the run's ``fpsim.sim.scaling.ScaledCasts``: each
    product then casts its operands with it and its output stays in the
    accumulation format (``fpsim.sim.policy``).
    """

    def __init__(self, policy: Policy, recorder=None, casts=None, *, rounds_operands: bool = False, seed: int = 0):
        self.policy = policy
        self.recorder = recorder
        self.casts = casts
        self.seed = seed
        """The stochastic rounding's seed of the casts a 16-bit run makes for its scaled overrides (the run's)."""
        self.rounds_operands = rounds_operands
        """An override's arithmetic: the operands reach it in the run's formats, so each product first rounds
        them to this policy's (a no-op where they agree)."""
        self._layers = {}  # layer -> the Compute of its policy, under per-module overrides
        self._override_casts = None  # a 16-bit run's casts for its scaled overrides
        self.formats = {"activations": policy.activations, "activation_grads": policy.gradients,
                        "weight_grads": policy.gradients}
        self.accumulator = FP32 if policy.tensor_core is not None else policy.accumulate
        """The format the products come out in: ``accumulate``, or FP32 from a tensor core."""
        fits = all(f.fits_float32 for f in (policy.params, policy.activations, policy.gradients,
                                            self.accumulator, policy.loss))
        self.dtype = np.dtype(np.float32 if fits else np.float64)
        """Container of every compute tensor: float32 when all the formats' values are float32s."""

    def matmul(self, a: np.ndarray, b: np.ndarray, a_kind: str, b_kind: str, layer: int) -> np.ndarray:
        """a @ b in layer ``layer``, each partial sum rounded to the policy's ``accumulate`` format (sequential order).

        ``a_kind`` and ``b_kind`` ("params", "activations", "gradients") name the operands.  Without
        scaling they are already in those kinds' formats; when the formats agree they are passed as
        ``inputs`` (a no-op rounding) so that ``fpsim.matmul`` can pick its fastest exact kernel for
        them.  Under a scaling recipe each is cast by ``casts``, blocks along the reduction axis
        (a's rows, b's columns).
        """
        module = module_name(layer)
        weight_gradient = {a_kind, b_kind} == {"activations", "gradients"}
        a_format, b_format = getattr(self.policy, a_kind), getattr(self.policy, b_kind)
        if self.casts is None and self.rounds_operands:
            a, b = (round_to(a, a_format).astype(self.dtype), round_to(b, b_format).astype(self.dtype))
        if self.policy.tensor_core is not None:
            return self._tensor_core(a, b, a_kind, b_kind, module, weight_gradient)
        if self.casts is not None:
            a = self.casts.cast(a, a_kind, module, axis=-1, weight_gradient=weight_gradient)
            b = self.casts.cast(b, b_kind, module, axis=0, weight_gradient=weight_gradient)
            inputs = FP32  # dequantized operands are float32 values
        else:
            inputs = a_format if a_format == b_format else None
        return self._product(a, b, inputs)

    def _tensor_core(self, a, b, a_kind: str, b_kind: str, module: str, weight_gradient: bool) -> np.ndarray:
        """a @ b on the policy's GPU tensor-core model (``fpsim.sim.tensor_core``): the operands in their kinds'
        formats (FP32 ones as TF32), or, under a scaling recipe, cast into elements and factors; the forward
        product (activations by params) fast-accumulated or split as ``Policy.splits`` says."""
        forward = (a_kind, b_kind) == ("activations", "params")
        if self.casts is None:
            return tensor_core.product(a, b, getattr(self.policy, a_kind), getattr(self.policy, b_kind),
                                       self.policy, forward=forward).astype(self.dtype, copy=False)
        a, b = (tensor_core.operand(self.casts, a, a_kind, module, a.ndim - 1, weight_gradient=weight_gradient),
                tensor_core.operand(self.casts, b, b_kind, module, 0, weight_gradient=weight_gradient))
        return tensor_core.scaled_product(a, b, self.policy, forward=forward).astype(self.dtype, copy=False)

    def for_layer(self, layer: int, layers: int) -> "Compute":
        """The arithmetic of layer ``layer`` of ``layers``: this one, or, under per-module overrides
        (``Policy.overrides``, patterns over the paths ``module_name`` gives), the override's.

        An override computes the layer's products (and rounds their outputs and the layer's input gradient)
        in its formats or with its scaling recipe; what the run's policy decides stays the run's: the weights
        the layer receives (the run's working weights: under a 16-bit run an FP8 override scales the 16-bit
        cast, not the FP32 master), the data's rounding and the loss."""
        if not self.policy.overrides:
            return self
        compute = self._layers.get(layer)
        if compute is None:
            if not self._layers:
                self._assignment = self.policy.resolve_overrides([module_name(i) for i in range(layers)])
            policy = self._assignment.policy_of(module_name(layer))
            if policy == self.policy:
                compute = self
            else:
                casts = None
                if policy.scaling is not None:
                    if self.casts is None and self._override_casts is None:  # a 16-bit run's, kept here
                        self._override_casts = ScaledCasts(self.policy, self.recorder, self.seed)
                    casts = (self.casts or self._override_casts).for_policy(policy)
                compute = Compute(policy, self.recorder, casts, rounds_operands=True)
            self._layers[layer] = compute
            if self.recorder is not None:
                self.recorder.ran_under(module_name(layer), policy.name)
        return compute

    def column_sum(self, dz: np.ndarray) -> np.ndarray:
        """1^T dz (a bias gradient) as a product, with the same accumulation (a sum in FP32 with a tensor core:
        a CUDA-core reduction); ``dz`` is never cast (the recipes take the bias gradient from the unquantized
        gradient)."""
        ones = np.ones((1, dz.shape[0]), dtype=self.dtype)
        return self._product(ones, dz, FP32 if self.casts is not None else self.policy.gradients)[0]

    def _product(self, a, b, inputs):
        return matmul(a, b, inputs=inputs, accumulate=self.accumulator).astype(self.dtype, copy=False)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b (broadcasting) rounded once to the products' format (``accumulator``), as a fused bias epilogue
        does (FP32 on a tensor core)."""
        return round_to(np.add(a, b, dtype=np.float64), self.accumulator).astype(self.dtype, copy=False)

    def round(self, values: np.ndarray, kind: str, layer: int) -> np.ndarray:
        """``values`` rounded to nearest into the format of ``kind``; the recorder sees both.  Under a scaling
        recipe a product's output stays in the accumulation format, unrecorded (its casts are recorded)."""
        if self.casts is not None:
            return round_to(values, self.accumulator).astype(self.dtype, copy=False)
        fmt = self.formats[kind]
        rounded = round_to(values, fmt).astype(self.dtype, copy=False)
        if self.recorder is not None:
            self.recorder.rounded(kind, module_name(layer), values, rounded, fmt)
        return rounded


def module_name(layer: int) -> str:
    """The path the recorder files layer ``layer`` under, as PyTorch would name it in a ``layers`` list."""
    return f"layers.{layer}"


class Float64Compute(Compute):
    """The FP64 reference of a step: float64 products (numpy, BLAS) and no rounding at all.

    It stands for exact arithmetic when measuring a policy's gradient error:
    float64 carries 53 bits, its own relative error (about 1e-16 times the
    condition of the sums) is far below that of any 16-bit policy.  It is not
    a policy's arithmetic, so it does not go through ``fpsim.matmul`` (whose
    exact FP64 accumulation would take a Fraction per step of every sum).
    """

    def __init__(self):
        super().__init__(FP64_POLICY)

    def matmul(self, a, b, a_kind=None, b_kind=None, layer=None):
        return np.matmul(a.astype(np.float64), b.astype(np.float64))

    def column_sum(self, dz):
        return dz.astype(np.float64).sum(axis=0)

    def add(self, a, b):
        return np.add(a, b, dtype=np.float64)

    def round(self, values, kind, layer):
        return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class ForwardPass:
    """What one forward pass of an ``MLP`` computed and its backward pass reads."""

    inputs: list
    """x_i, the input of layer i, (B, n_in_i): the data for layer 0, then each hidden layer's ReLU output."""
    weights: list
    """W_i as layer i's products used it (the params-format cast for a policy), (n_in_i, n_out_i)."""
    relu_masks: list
    """z_i > 0 for each hidden layer i, (B, n_out_i): where its ReLU passes the gradient."""
    output: np.ndarray
    """z_{L-1}, the last layer's output (logits or predictions), (B, n_out), in the activations format."""


@dataclass(frozen=True)
class LossPass:
    """A loss's value and what its backward pass reads."""

    value: float
    """L, rounded to the loss format."""
    residual: np.ndarray
    """In float64, (B, n_out): softmax(z) - onehot(label) for cross-entropy, y_hat - y for squared error;
    dL/d(output) is this times a constant (1 / B, or 2 / (B * n_out))."""


class Linear:
    """z = x W + b, with x in the activations format and W, b in the params format."""

    def __init__(self, index: int, n_in: int, n_out: int):
        self.index, self.n_in, self.n_out = index, n_in, n_out

    def forward(self, compute: Compute, x, W, b):
        """z = x W + b: the product accumulated in ``accumulate``, the bias added, rounded to activations."""
        z = compute.add(compute.matmul(x, W, "activations", "params", self.index), b)
        return compute.round(z, "activations", self.index)

    def backward(self, compute: Compute, x, W, dz, input_grad: bool = True):
        """Given the forward pass's x and W and dL/dz (gradients format): dL/dW = x^T dz, dL/db = 1^T dz,
        and dL/dx = dz W^T if asked."""
        dW = compute.round(compute.matmul(x.T, dz, "activations", "gradients", self.index),
                           "weight_grads", self.index)
        db = compute.round(compute.column_sum(dz), "weight_grads", self.index)
        dx = None
        if input_grad:  # dL/dx is the previous layer's output gradient
            dx = compute.round(compute.matmul(dz, W.T, "gradients", "params", self.index),
                               "activation_grads", self.index - 1)
        return dx, dW, db


def relu(z):
    """a = max(z, 0), exact in any format (NaN stays NaN), and the mask z > 0 its backward pass needs."""
    return np.maximum(z, 0), z > 0


def relu_backward(positive, da):
    """dL/dz = dL/da where z > 0 (``positive``, from ``relu``), else 0: exact."""
    return np.where(positive, da, 0).astype(da.dtype, copy=False)


class SoftmaxCrossEntropy:
    """L = mean over the batch of -log softmax(z)[label], computed in float64, rounded to the loss format.

    The result and the gradient are each rounded once to the policy's ``loss``
    format (FP32 in the presets, as autocast keeps softmax and cross-entropy in
    FP32); a real FP32 softmax would differ from this in the last bits only.
    """

    def forward(self, compute: Compute, logits, labels) -> LossPass:
        z = logits.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            z = z - z.max(axis=1, keepdims=True)
            log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        rows = np.arange(len(labels))
        residual = np.exp(log_probs)
        residual[rows, labels] -= 1.0
        return LossPass(float(round_to(-log_probs[rows, labels].mean(), compute.policy.loss)), residual)

    def backward(self, compute: Compute, loss: LossPass, scale: float):
        """d(scale * L)/dz = scale * (softmax(z) - onehot) / B, rounded to the loss format."""
        return round_to(loss.residual * (scale / loss.residual.shape[0]), compute.policy.loss)

    @staticmethod
    def score(logits, labels) -> float:
        """Accuracy: the share of rows whose largest logit is the label's (a row with inf/NaN counts as wrong)."""
        finite_rows = np.isfinite(logits).all(axis=1)
        return float(np.mean(finite_rows & (np.argmax(np.nan_to_num(logits), axis=1) == labels)))


class MeanSquaredError:
    """L = mean over all elements of (y_hat - y)^2, computed in float64, rounded to the loss format."""

    def forward(self, compute: Compute, predictions, targets) -> LossPass:
        with np.errstate(invalid="ignore", over="ignore"):
            residual = predictions.astype(np.float64) - targets
            return LossPass(float(round_to(np.mean(residual ** 2), compute.policy.loss)), residual)

    def backward(self, compute: Compute, loss: LossPass, scale: float):
        """d(scale * L)/dy_hat = scale * 2 (y_hat - y) / (B * outputs), rounded to the loss format."""
        with np.errstate(invalid="ignore", over="ignore"):
            return round_to(loss.residual * (2.0 * scale / loss.residual.size), compute.policy.loss)

    @staticmethod
    def score(predictions, targets):
        """No accuracy for a regression."""
        return None


class MLP:
    """Linear -> ReLU -> ... -> Linear, with a softmax cross-entropy or squared-error loss.

    ``sizes`` = (inputs, hidden..., outputs).  The model holds its layers'
    structure only; the weights are passed in (the training step owns the
    master copy and its cast), and each forward pass returns the values its
    backward pass needs.
    """

    def __init__(self, sizes, task: str = "classification"):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"an MLP needs an input size, an output size and positive widths; got {sizes}")
        self.sizes = sizes
        self.layers = [Linear(i, n_in, n_out) for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))]
        self.loss = SoftmaxCrossEntropy() if task == "classification" else MeanSquaredError()

    def init_weights(self, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        """He-normal weights (std sqrt(2 / n_in), as for ReLU) and zero biases, in float64."""
        return [(rng.normal(0.0, np.sqrt(2.0 / layer.n_in), size=(layer.n_in, layer.n_out)), np.zeros(layer.n_out))
                for layer in self.layers]

    def forward(self, compute: Compute, x, weights) -> ForwardPass:
        """The network on the batch ``x``: its output (logits or predictions, in the activations format)
        and what the backward pass reads."""
        inputs, masks = [], []
        a = x
        for layer, (W, b) in zip(self.layers, weights):
            inputs.append(a)
            a = layer.forward(compute.for_layer(layer.index, len(self.layers)), a, W, b)
            if layer.index < len(self.layers) - 1:
                a, positive = relu(a)
                masks.append(positive)
        return ForwardPass(inputs=inputs, weights=[W for W, _ in weights], relu_masks=masks, output=a)

    def backward(self, compute: Compute, forward: ForwardPass, output_grad):
        """Weight and bias gradients of every layer, from the forward pass and dL/d(output) (already in the
        gradients format)."""
        grads = [None] * len(self.layers)
        dz = output_grad
        for layer in reversed(self.layers):
            i = layer.index
            dx, dW, db = layer.backward(compute.for_layer(i, len(self.layers)), forward.inputs[i], forward.weights[i],
                                        dz, input_grad=i > 0)
            grads[i] = (dW, db)
            if dx is not None:
                dz = relu_backward(forward.relu_masks[i - 1], dx)
        return grads
