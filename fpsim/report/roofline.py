"""An analytic roofline model of a training step's time on a named GPU: a MODEL, not a measurement.

A step is a list of operations, each with its floating-point operations and the
tensor elements it reads and writes.  On a GPU with peak throughput ``F`` for the
operation's precision (FLOP/s) and memory bandwidth ``W`` (bytes/s), an operation
takes at least

    t = max(flops / F, bytes / W)                          (the roofline bound)

and a step at least the sum over its operations.  Matrix products run at the
peak of their input format (FP32 CUDA cores, TF32 or FP16/BF16 tensor cores);
element-wise operations are bound by their bytes.  Bytes follow the precision
setting: 4 per element in FP32 and TF32, 2 in 16-bit mixed precision except the
operations autocast keeps in FP32 (softmax, layer norm, the loss).  The optimizer
step is priced by the bytes it reads and writes per parameter.

The model ignores kernel launch overheads, data loading, imperfect utilisation and
everything else that keeps a real step above its roofline bound.  Its speed-ups
are ratios of two such lower bounds: what faster arithmetic and smaller tensors
give if both precisions reach the same share of their peaks.  They are not
upper bounds (a real FP32 step may sit further from its roofline than a 16-bit
one), only the model's answer under that assumption.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sources import A100_DATASHEET


@dataclass(frozen=True)
class GPU:
    """Published peaks of a GPU (dense, no sparsity)."""

    name: str
    fp32_flops: float
    """FP32 on CUDA cores, FLOP/s."""
    tf32_flops: float
    """TF32 tensor cores, FLOP/s."""
    fp16_flops: float
    """FP16 and BF16 tensor cores (FP32 accumulate), FLOP/s."""
    bandwidth: float
    """Memory bandwidth, bytes/s."""
    source: str


A100_80GB = GPU("NVIDIA A100 SXM 80GB", 19.5e12, 156e12, 312e12, 2.039e12, A100_DATASHEET)
A100_40GB = GPU("NVIDIA A100 40GB", 19.5e12, 156e12, 312e12, 1.555e12, A100_DATASHEET)


@dataclass(frozen=True)
class Precision:
    """How a step is run: the matmul peak it gets and the bytes its tensors take."""

    name: str
    matmul: str
    """Which peak matrix products get: "fp32", "tf32" or "fp16"."""
    element_bytes: int
    """Bytes per activation / weight-copy element in compute."""
    optimizer_bytes_per_param: int
    """Bytes an Adam step reads and writes per parameter."""


# Adam per parameter, FP32: read weight, gradient, m, v (16 bytes), write weight, m, v (12): 28.
# 16-bit mixed (autocast): the same on FP32 master state, plus writing the 16-bit weight copy (2): 30.
PRECISIONS = {
    "fp32": Precision("fp32", "fp32", 4, 28),
    "tf32": Precision("tf32", "tf32", 4, 28),
    "16-mixed": Precision("16-mixed", "fp16", 2, 30),
}


@dataclass(frozen=True)
class Op:
    """One operation of a step, counted in elements (bytes follow the precision)."""

    name: str
    kind: str
    """"matmul" or "elementwise"."""
    flops: float
    elements: float
    """Elements read plus written."""
    fp32_under_autocast: bool = False
    """Autocast runs it in FP32 (softmax, layer norm, loss): 4 bytes per element in every precision."""


@dataclass(frozen=True)
class Workload:
    """A model's training step as operations, with its parameter count."""

    name: str
    ops: tuple[Op, ...]
    params: int
    description: str


def _matmul(name, m, k, n, count=1.0):
    """``count`` products of (m x k) by (k x n): 2mkn flops, reading both and writing the result."""
    return Op(name, "matmul", count * 2.0 * m * k * n, count * (m * k + k * n + m * n))


def _elementwise(name, elements, reads_writes=2, flops_per_element=1, fp32=False):
    return Op(name, "elementwise", elements * flops_per_element, elements * reads_writes, fp32)


def _with_backward(forward: list[Op]) -> list[Op]:
    """Forward ops and their backward: a matmul's backward is two matmuls of its size (input and weight
    gradients); an element-wise op's backward reads the saved input and the output gradient, writes one."""
    backward = []
    for op in forward:
        if op.kind == "matmul":
            backward.append(Op(op.name + " backward", "matmul", 2 * op.flops, 2 * op.elements))
        else:
            backward.append(Op(op.name + " backward", "elementwise", op.flops, op.elements * 1.5,
                               op.fp32_under_autocast))
    return forward + backward


def mlp_workload(widths, batch: int) -> Workload:
    """An MLP with layer widths ``widths`` (input first, classes last), ReLU, softmax cross-entropy."""
    forward = []
    params = 0
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        forward.append(_matmul(f"layer {i + 1} matmul", batch, n_in, n_out))
        forward.append(_elementwise(f"layer {i + 1} bias" + (" + ReLU" if i < len(widths) - 2 else ""),
                                    batch * n_out, reads_writes=2, flops_per_element=2))
        params += n_in * n_out + n_out
    forward.append(_elementwise("softmax cross-entropy", batch * widths[-1], 2, 5, fp32=True))
    return Workload(f"MLP {'-'.join(map(str, widths))}, batch {batch}", tuple(_with_backward(forward)), params,
                    f"MLP with layer widths {widths}, batch {batch}")


def encoder_workload(layers=6, d=768, heads=12, ffn=3072, vocab=30522, seq=512, batch=16,
                     classes=2, name="DistilBERT-sized encoder") -> Workload:
    """A transformer encoder (BERT-style, post-norm, GELU) with a classification head."""
    tokens = batch * seq
    forward = [_elementwise("embedding lookup + position", tokens * d, 3)]
    for i in range(layers):
        scores = batch * heads * seq * seq
        forward += [
            _matmul(f"L{i} QKV projection", tokens, d, 3 * d),
            _matmul(f"L{i} attention scores QK^T", seq, d // heads, seq, batch * heads),
            _elementwise(f"L{i} softmax", scores, 2, 5, fp32=True),
            _elementwise(f"L{i} attention dropout", scores, 3),
            _matmul(f"L{i} attention x V", seq, seq, d // heads, batch * heads),
            _matmul(f"L{i} output projection", tokens, d, d),
            _elementwise(f"L{i} residual + layer norm 1", tokens * d, 4, 8, fp32=True),
            _matmul(f"L{i} FFN up", tokens, d, ffn),
            _elementwise(f"L{i} GELU", tokens * ffn, 2, 8),
            _matmul(f"L{i} FFN down", tokens, ffn, d),
            _elementwise(f"L{i} residual + layer norm 2", tokens * d, 4, 8, fp32=True),
        ]
    forward += [_matmul("classifier", batch, d, classes),
                _elementwise("softmax cross-entropy", batch * classes, 2, 5, fp32=True)]
    per_layer = 4 * d * d + 4 * d + 2 * d * ffn + d + ffn + 4 * d
    params = vocab * d + seq * d + 2 * d + layers * per_layer + d * classes + classes
    return Workload(f"{name}, batch {batch} x {seq} tokens", tuple(_with_backward(forward)), params,
                    f"{layers} layers, hidden {d}, {heads} heads, FFN {ffn}, vocabulary {vocab}, "
                    f"{batch} sequences of {seq} tokens")


def op_seconds(op: Op, precision: Precision, gpu: GPU) -> float:
    """The roofline bound of one operation: max(flops / peak, bytes / bandwidth)."""
    bytes_per = 4 if op.fp32_under_autocast else precision.element_bytes
    if op.kind == "matmul":
        peak = {"fp32": gpu.fp32_flops, "tf32": gpu.tf32_flops, "fp16": gpu.fp16_flops}[precision.matmul]
    else:
        peak = gpu.fp32_flops
    return max(op.flops / peak, op.elements * bytes_per / gpu.bandwidth)


def step_time(workload: Workload, precision, gpu: GPU = A100_80GB) -> dict:
    """Modelled seconds of one training step, split into matmuls, element-wise ops and the optimizer."""
    precision = PRECISIONS[precision] if isinstance(precision, str) else precision
    split = {"matmul": 0.0, "elementwise": 0.0}
    for op in workload.ops:
        split[op.kind] += op_seconds(op, precision, gpu)
    split["optimizer"] = workload.params * precision.optimizer_bytes_per_param / gpu.bandwidth
    return {"workload": workload.name, "precision": precision.name, "gpu": gpu.name,
            **{f"{k} s": v for k, v in split.items()}, "total s": sum(split.values()),
            "flops": sum(op.flops for op in workload.ops)}


def speedups(workload: Workload, gpu: GPU = A100_80GB) -> dict:
    """Modelled step time of each precision, and the FP32 / TF32 time over it."""
    times = {name: step_time(workload, p, gpu)["total s"] for name, p in PRECISIONS.items()}
    return {"times": times, "fp32_over": {k: times["fp32"] / v for k, v in times.items()},
            "tf32_over": {k: times["tf32"] / v for k, v in times.items()}}


def decode_step_time(params: float, bytes_per_param: int, gpu: GPU = A100_80GB, batch: int = 1) -> float:
    """Modelled seconds to generate one token of a decoder at small batch: every weight is read once
    (2 flops per parameter per sequence); bound by max(flops / tensor peak, weight bytes / bandwidth)."""
    peak = gpu.fp16_flops if bytes_per_param == 2 else gpu.fp32_flops
    return max(2.0 * params * batch / peak, params * bytes_per_param / gpu.bandwidth)


def gpu_matmul_timing(n: int = 8192, repeats: int = 20) -> list[dict] | None:
    """Measured TFLOP/s of an n x n matmul in FP32, TF32, FP16 and BF16 with torch on a CUDA device.

    Returns None when torch or a CUDA device is not available (the report then shows the model only).
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    rows = []
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            a @ b
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                a @ b
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1000 / repeats
            rows.append({"precision": name, "n": n, "seconds": seconds, "TFLOP/s": 2 * n ** 3 / seconds / 1e12,
                         "device": torch.cuda.get_device_name()})
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return rows


def speedup_table(workloads: dict, gpus) -> list[dict]:
    """Per workload, GPU and batch: each precision's modelled step time and the speed-ups over FP32 and TF32.
    ``workloads``: name -> (batch sizes, a function of the batch returning the ``Workload``)."""
    rows = []
    for name, (batches, make) in workloads.items():
        for gpu in gpus:
            for b in batches:
                s = speedups(make(b), gpu)
                rows.append({"workload": name, "gpu": gpu.name, "batch": b,
                             **{f"{p} step s": t for p, t in s["times"].items()},
                             "tf32 over fp32": s["fp32_over"]["tf32"], "16-mixed over fp32": s["fp32_over"]["16-mixed"],
                             "16-mixed over tf32": s["tf32_over"]["16-mixed"]})
    return rows
