"""Memory of a training step and of inference, by precision: measured on real numpy containers, and modelled.

Measured: an MLP step (forward, backward, Adam update) runs with each tensor held
in a real ``float32``, ``float16`` or ``bfloat16`` (ml_dtypes) array, as the policy
says, and ``tracemalloc`` (which numpy reports its buffers to) gives the bytes held
between steps (weights, master copy, optimizer state) and the peak during the step.
Matrix products and the Adam update are computed in FP32 in blocks of ``CHUNK``
and stored in their containers, so transient buffers stay small, as on a GPU whose
kernels accumulate in registers.

Modelled: bytes per tensor kind,

    state       = P * (weight + master + optimizer state bytes per parameter)
    peak        = state + P * (gradient + weight-copy bytes) + A(batch) * activation bytes

with P parameters and A(batch) activation elements saved for the backward pass.
With Adam, FP32 training holds 4 + 4 + 8 = 16 bytes per parameter, and mixed
precision also 16 (16-bit weights and gradients 2 + 2, FP32 master, momentum and
variance 4 + 4 + 4: ZeRO, Sec. 3.1), or 18 the way PyTorch autocast does it (FP32
parameters, gradients and Adam state, plus 16-bit copies of the weights): only the
activations halve.  So the claim "memory barely changes" holds where parameters
and optimizer state dominate and fails where activations dominate.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass

import ml_dtypes
import numpy as np

CHUNK = 64
"""Block edge of the FP32 computations (matrix products, Adam) before results are stored in their containers."""

DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}


@dataclass(frozen=True)
class MemoryPolicy:
    """Which container each tensor of a training step lives in (None: not held)."""

    name: str
    weights: str
    """The weights the optimizer updates when there is no master copy, else the copy used in compute."""
    master: str | None
    """FP32 master weights (updated by the optimizer), or None."""
    weight_copy: str | None
    """A 16-bit copy of FP32 weights made for compute during the step (autocast), or None."""
    gradients: str
    """Weight gradients as held for the optimizer."""
    activations: str
    """Activations saved for the backward pass, and activation gradients."""
    optimizer_state: str
    """Adam's momentum and variance."""
    description: str

    def bytes_per_param(self) -> dict:
        """Bytes per parameter of each tensor kind (Adam: two state tensors)."""
        size = lambda name: 0 if name is None else DTYPES[name].itemsize  # noqa: E731
        return {"weights": size(self.weights), "master": size(self.master), "weight copy": size(self.weight_copy),
                "gradients": size(self.gradients), "optimizer state": 2 * size(self.optimizer_state)}


MEMORY_POLICIES = {
    "fp32": MemoryPolicy("fp32", "fp32", None, None, "fp32", "fp32", "fp32", "everything FP32"),
    "fp16-autocast": MemoryPolicy(
        "fp16-autocast", "fp32", None, "fp16", "fp32", "fp16", "fp32",
        "PyTorch autocast: FP32 parameters, gradients and Adam state; FP16 weight copies and activations"),
    "fp16-mixed": MemoryPolicy(
        "fp16-mixed", "fp16", "fp32", None, "fp16", "fp16", "fp32",
        "ZeRO-style mixed: FP16 weights, gradients, activations; FP32 master weights and Adam state"),
    "bf16-pure": MemoryPolicy("bf16-pure", "bf16", None, None, "bf16", "bf16", "bf16",
                              "everything BF16 (no master copy)"),
}


# --- the analytic model --------------------------------------------------------------------

def mlp_saved_elements(widths, batch: int) -> int:
    """Activation elements an MLP keeps for backward: each layer's input and pre-activation, and the logits."""
    return batch * (sum(widths[:-1]) + sum(widths[1:]))


def mlp_params(widths) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def transformer_saved_elements(layers: int, d: int, heads: int, seq: int, batch: int) -> float:
    """Activation elements a transformer keeps for backward, from the per-layer byte count of
    Korthikanti et al. 2022 (Reducing Activation Recomputation in Large Transformer Models):
    s*b*h*(34 + 5*a*s/h) bytes at 16 bits, i.e. half as many elements."""
    return layers * seq * batch * d * (34 + 5 * heads * seq / d) / 2


def mlp_working_elements(widths, batch: int) -> int:
    """Activation-gradient elements alive at once in an MLP's backward pass: two layers' worth."""
    return 2 * batch * max(widths[1:])


def modelled_bytes(policy: MemoryPolicy, params: int, saved_elements: float, working_elements: float = 0) -> dict:
    """Modelled bytes of each tensor kind and the peak of a step (see the module docstring).

    ``working_elements``: activation gradients alive at once during backward, in the activations' format.
    """
    per_param = policy.bytes_per_param()
    parts = {kind: params * b for kind, b in per_param.items()}
    parts["activations"] = (saved_elements + working_elements) * DTYPES[policy.activations].itemsize
    state = parts["weights"] + parts["master"] + parts["optimizer state"]
    return {"policy": policy.name, **{f"{k} bytes": v for k, v in parts.items()}, "state bytes": state,
            "peak bytes": sum(parts.values()), "bytes per parameter": sum(per_param.values())}


# --- the measured step ------------------------------------------------------------------------

def _matmul(a, b, out_dtype) -> np.ndarray:
    """``a @ b`` computed in FP32 in blocks of CHUNK x CHUNK outputs, stored in ``out_dtype``."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=out_dtype)
    for j in range(0, b.shape[1], CHUNK):
        b32 = b[:, j:j + CHUNK].astype(np.float32)
        for i in range(0, a.shape[0], CHUNK):
            out[i:i + CHUNK, j:j + CHUNK] = a[i:i + CHUNK].astype(np.float32) @ b32
    return out


def _weight_gradient(h, dz, out_dtype) -> np.ndarray:
    """``h.T @ dz`` (a sum over the batch) accumulated in FP32 one block of CHUNK columns at a time."""
    out = np.empty((h.shape[1], dz.shape[1]), dtype=out_dtype)
    for j in range(0, dz.shape[1], CHUNK):
        total = np.zeros((h.shape[1], min(CHUNK, dz.shape[1] - j)), dtype=np.float32)
        for i in range(0, h.shape[0], CHUNK):
            total += h[i:i + CHUNK].astype(np.float32).T @ dz[i:i + CHUNK, j:j + CHUNK].astype(np.float32)
        out[:, j:j + CHUNK] = total
    return out


def _adam_update(p, g, m, v, lr, beta1, beta2, eps) -> None:
    """In-place Adam step (no bias correction) on flat blocks of CHUNK^2 elements, computed in FP32."""
    flat = [a.reshape(-1) for a in (p, g, m, v)]
    block = CHUNK * CHUNK
    for start in range(0, flat[0].size, block):
        pb, gb, mb, vb = (a[start:start + block] for a in flat)
        g32 = gb.astype(np.float32)
        m32 = beta1 * mb.astype(np.float32) + (1 - beta1) * g32
        v32 = beta2 * vb.astype(np.float32) + (1 - beta2) * g32 * g32
        mb[...] = m32
        vb[...] = v32
        pb[...] = pb.astype(np.float32) - lr * m32 / (np.sqrt(v32) + eps)


class _Model:
    """An MLP's state held in the policy's containers."""

    def __init__(self, widths, policy: MemoryPolicy, rng):
        self.policy = policy
        held = DTYPES[policy.weights]
        self.weights = [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(held)
                        for a, b in zip(widths[:-1], widths[1:])]
        self.biases = [np.zeros(b, dtype=held) for b in widths[1:]]
        self.master = ([w.astype(DTYPES[policy.master]) for w in self.weights + self.biases]
                       if policy.master else None)
        state = DTYPES[policy.optimizer_state]
        self.m = [np.zeros(p.shape, dtype=state) for p in self.weights + self.biases]
        self.v = [np.zeros(p.shape, dtype=state) for p in self.weights + self.biases]

    def forward(self, x, for_training: bool):
        act = DTYPES[self.policy.activations]
        copy = DTYPES[self.policy.weight_copy] if self.policy.weight_copy else None
        weights = [w.astype(copy) for w in self.weights] if copy is not None else self.weights
        h, saved = x.astype(act), []
        for i, (w, b) in enumerate(zip(weights, self.biases)):
            z = _matmul(h, w, act)
            z += b.astype(act)
            if for_training:
                saved.append((h, z))
            h = np.maximum(z, act.type(0)) if i < len(weights) - 1 else z
        return h, saved, weights

    def step(self, x, labels, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        """One Adam step on softmax cross-entropy (computed in FP32, as autocast does)."""
        act, grad = DTYPES[self.policy.activations], DTYPES[self.policy.gradients]
        logits, saved, weights = self.forward(x, for_training=True)
        z32 = logits.astype(np.float32)
        probs = np.exp(z32 - z32.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(len(labels)), labels] -= 1.0
        dz = (probs / len(labels)).astype(act)
        del probs, z32, logits
        grads_w, grads_b = [None] * len(weights), [None] * len(weights)
        for i in reversed(range(len(weights))):
            h, z = saved.pop()
            grads_w[i] = _weight_gradient(h, dz, grad)
            grads_b[i] = dz.astype(np.float32).sum(axis=0).astype(grad)
            if i:
                dh = _matmul(dz, weights[i].T, act)
                dh *= (h > 0)
                dz = dh
            del h, z
        del weights
        targets = self.master if self.master is not None else self.weights + self.biases
        for p, g, m, v in zip(targets, grads_w + grads_b, self.m, self.v):
            _adam_update(p, g, m, v, lr, beta1, beta2, eps)
        if self.master is not None:
            for held, master in zip(self.weights + self.biases, self.master):
                held[...] = master.astype(held.dtype)


def measure_training_step(widths, batch: int, policy, seed: int = 0) -> dict:
    """Bytes held between steps and the peak during one step of the MLP, measured with tracemalloc."""
    policy = MEMORY_POLICIES[policy] if isinstance(policy, str) else policy
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, widths[0])).astype(np.float32)
    labels = rng.integers(0, widths[-1], batch)
    tracemalloc.start()
    try:
        model = _Model(widths, policy, rng)
        model.step(x, labels)  # a first step so lazily made buffers exist
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        model.step(x, labels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"policy": policy.name, "batch": batch, "held bytes": held, "peak bytes": peak}


def measure_inference(widths, batch: int, dtype: str, seed: int = 0) -> dict:
    """Bytes of the weights and the peak of a forward pass with weights and activations in ``dtype``."""
    policy = MemoryPolicy(dtype, dtype, None, None, dtype, dtype, dtype, f"inference in {dtype}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, widths[0])).astype(np.float32)
    tracemalloc.start()
    try:
        model = _Model(widths, policy, rng)
        model.m = model.v = []  # inference holds no optimizer state
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        model.forward(x, for_training=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    weight_bytes = sum(p.nbytes for p in model.weights + model.biases)
    return {"dtype": dtype, "batch": batch, "weight bytes": weight_bytes, "held bytes": held, "peak bytes": peak}


def mlp_training_memory(widths, batches, policies) -> tuple[list[dict], list[dict]]:
    """One measured training step (``measure_training_step``) and the model's bytes (``modelled_bytes``) of
    the MLP ``widths``, per batch size and ``MEMORY_POLICIES`` name: (measured rows, modelled rows)."""
    params = mlp_params(widths)
    measured, modelled = [], []
    for b in batches:
        for name in policies:
            measured.append(measure_training_step(widths, b, name))
            modelled.append({"batch": b, **modelled_bytes(MEMORY_POLICIES[name], params, mlp_saved_elements(widths, b),
                                                           mlp_working_elements(widths, b))})
    return measured, modelled


def encoder_training_memory(shape: dict, params: float, batches, policies) -> list[dict]:
    """The modelled bytes of a transformer encoder's training step (``shape``: layers, d, heads, seq; ``params``
    parameters), per batch size and ``MEMORY_POLICIES`` name."""
    rows = []
    for b in batches:
        saved = transformer_saved_elements(shape["layers"], shape["d"], shape["heads"], shape["seq"], b)
        rows += [{"batch": b, **modelled_bytes(MEMORY_POLICIES[name], params, saved)} for name in policies]
    return rows
