"""``fpsim.torch.emulate``: run any PyTorch model's forward and backward passes under a precision policy.

Inside ``with emulate(policy, model=model, recorder=recorder):`` every ATen operation that PyTorch runs,
forward and backward, goes through a ``TorchDispatchMode`` (``torch.utils._python_dispatch``, the
mechanism of PyTorch's own ``FlopCounterMode``): ``fpsim.torch.mode`` looks up each op's placement
(``fpsim.torch.placement``, one table from ``torch.autocast``'s op lists, keyed by ATen operators) and
calls the regime's handler for it.  The model is not changed: its tensors stay float32 (or float64) and
hold, after each operation, exactly the values the policy's formats give.

The regimes: without a scaling recipe, ``fpsim.torch.autocast`` (products' inputs and outputs rounded to
the compute formats, autocast's FP32 ops in FP32, everything else by type promotion; with
``placement="low-precision"`` every operation except views rounds its inputs, parameters included, and
its outputs, the model's buffers staying FP32).  With an FP8 / MX recipe (``fpsim.sim.policy``),
``fpsim.torch.scaled`` (the products' operands cast by the run's ``ScaledCasts``, all else FP32).  With
per-module ``overrides``, ``fpsim.torch.overrides.RoutingMode`` holds one such mode per distinct policy and
hands each op, forward and backward, to the mode of its module's policy.

The backward pass: autocast acts in the forward pass only; on the hardware a backward operation runs in
the precision its tensors have, and autograd casts each incoming gradient to the dtype of the tensor it
belongs to.  So the backward of an operation whose forward output was rounded rounds its incoming gradient
and its outputs to ``gradients``; other backward operations follow the promotion rule.  Forward or
backward is ``torch._C._current_autograd_node()`` (the node the autograd engine runs, None in the forward
pass).  The recorder's entries are named by module path and kind (``fpsim.torch.tracking``: the root is
``"model"``, operations outside ``model.forward`` are ``"(outside)"``; without ``model`` every path is
``"(outside)"`` and every backward rounding an activation gradient).  An FP32 compute format changes no
value; with a recorder it is observed all the same, so that an FP32 run records the values a narrower
format would have to hold.

Dtypes, layouts, devices: float32 and float64 tensors are emulated.  A float64 tensor holds what a float32
one would (a format's values or FP32 values: every float64 output of an operation other than a view or a
move is rounded to FP32 at least, unrecorded); each operation computes in float64 before its output is
rounded.  Integer and boolean tensors pass through.  A policy says which format each tensor holds, and a
float32 tensor is the container that holds them all; so a float16 or bfloat16 model (or float8, complex) is
refused with a one-line TypeError saying to call ``model.float()``: its tensors could not hold the FP32
values the policy keeps (autocast's FP32 ops, the products' FP32 accumulation, FP32 master weights), and a
policy applied to them would describe another computation than the one they run.  Meta tensors are a dry
run: shapes pass through, nothing is rounded or recorded.  Sparse layouts are refused.  Values are rounded in
the tensor's own memory (``fpsim.torch.rounding.round_into``): in CPU memory through its numpy view (fpsim's
nearest-even kernel), on another device by torch's own int32 operations there (``fpsim.torch.native``, the
kernel's bits; CUDA untested here) under the regime without a scaling recipe and ``accumulate="native"``;
the scaled recipes and the exact products compute through numpy, and refuse other devices (TypeError).

Any module: a TorchScript module (``torch.jit.script`` / ``trace`` / ``load``) runs, its parameters are the
weights, and its weight gradients keep their module paths; its submodules take no hooks, so every other entry
is filed under ``"(outside)"``, with one warning (``fpsim.torch.tracking.hookable``).  A traced module gives the
eager module's numbers bit for bit; a scripted one its forward outputs and weight gradients, but its backward
runs op by op too: inside the context TorchScript's graph executor does not optimise
(``torch.jit.optimized_execution(False)``) and the model's compiled plans are flushed on entry and exit, since
an optimised plan computes its backward as one ``DifferentiableGraph`` node, TorchScript's own autodiff, whose
ops (a Linear bias's gradient summed before its products are rounded) reach the mode in no node of eager's.

Threads: ``emulate`` leaves torch's and numba's thread counts as the caller set them
(``fpsim.numerics.threads.start_numba_pool``), so ``emulate("fp32")`` runs the very kernels plain torch runs.

One context, its own state: what the mode remembers of tensors belongs to one ``with`` block and is
dropped when it ends, so a later context under another policy rounds a tensor afresh.  Contexts do not
nest (both modes would round every operation, one format after the other).  With a recorder, each
backward rounding keeps its tensor and a copy of its values before and after until the end of the
backward pass (about two more copies of the gradients); without one nothing is copied.

``accumulate="native"``: products are float32 BLAS on the rounded inputs (FP32 accumulation in the
library's order: what FP16/BF16 tensor cores with an FP32 accumulator approximate).
``accumulate="exact"``: mm, addmm, bmm and baddbmm go through ``fpsim.matmul`` with the policy's
``accumulate`` format, sequential order (``fpsim.torch.products``); convolutions and attention have no
exact path and raise under an accumulation format other than FP32.  Under a GPU ``accumulate``
(``Policy.tensor_core``) ``"exact"`` computes mm, addmm, bmm, baddbmm and the convolutions on that tensor
core (``fpsim.torch.products.tensor_core``; with a scaling recipe, ``fpsim.torch.scaled``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from ..numerics.formats import FP32
from ..sim.policy import Policy
from ..sim.scaling import ScaledCasts
from .autocast import AutocastMode
from .mode import EmulationMode, tensors_of
from .overrides import RoutingMode
from .scaled import ScaledMode
from .tracking import OUTSIDE, ROOT

__all__ = ["ACCUMULATE_MODES", "OUTSIDE", "ROOT", "emulate", "tensors_of"]

ACCUMULATE_MODES = ("native", "exact")


@contextmanager
def emulate(policy, *, model=None, recorder=None, accumulate="native", casts=None):
    """Every ATen op run inside follows ``policy`` (an ``fpsim.Policy``, a preset name or a dict).

    model: an ``nn.Module`` whose module paths name the recorder's entries and
    whose parameters are the weights (cast to ``policy.params`` at use; their
    gradients recorded as ``"weight_grads"``).  recorder: an
    ``fpsim.sim.recorder.Recorder`` (or anything with its ``rounded`` method) or
    None.  accumulate: ``"native"`` or ``"exact"`` (see the module docstring).  casts: for a policy with a
    scaling recipe, the run's ``ScaledCasts`` (its delayed scalers live across steps; by default a new
    one, recording to ``recorder``).  Run a step's forward and backward passes inside the same ``with``
    block: the backward pass reads what its forward recorded.  Contexts do not nest (RuntimeError).
    """
    for running in _get_current_dispatch_mode_stack():
        if isinstance(running, EmulationMode):
            raise RuntimeError(f"emulate contexts do not nest: one under policy {running.policy.name} is running; "
                               f"leave its with block before starting another")
    policy = Policy.coerce(policy)
    if accumulate not in ACCUMULATE_MODES:
        raise ValueError(f"accumulate must be one of {', '.join(ACCUMULATE_MODES)}, got {accumulate!r}")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if casts is None and any(p.scaling is not None for p in (policy, *(p for _, p in policy.overrides))):
        casts = ScaledCasts(policy, recorder)

    def regime(policy, model=None):
        """The mode of one policy's regime (an override's computes with the run's casts and recorder)."""
        if policy.scaling is not None and accumulate != ("exact" if policy.tensor_core else "native"):
            raise ValueError("a scaling recipe's products accumulate in FP32 (accumulate='native') or on a GPU's "
                             "tensor core (a policy with a GPU accumulate, accumulate='exact')")
        if accumulate == "native" and policy.accumulate != FP32:
            raise ValueError(f"policy {policy.name} accumulates in {policy.accumulate}: native products "
                             f"accumulate in FP32, use accumulate='exact'")
        if policy.scaling is not None:
            return ScaledMode(policy, model, casts.for_policy(policy))
        return AutocastMode(policy, model, recorder, accumulate)

    mode = RoutingMode(policy, model, recorder, regime) if policy.overrides else regime(policy, model)
    handles = mode.attach()
    try:
        with _torchscript_op_by_op(model), mode:
            yield mode
    finally:
        for handle in handles:
            handle.remove()
        mode.release()


@contextmanager
def _torchscript_op_by_op(model):
    """TorchScript run by its interpreter, op by op with eager's autograd nodes (see the module docstring):
    the executor's optimisation off, and ``model``'s compiled plans flushed before and after (an optimised
    plan, once built, would be reused; flushed after, the model compiles afresh outside)."""
    scripted = [m for m in model.modules() if isinstance(m, torch.jit.ScriptModule)] if model is not None else []

    def flush():
        for module in scripted:
            for name in module._c._method_names():
                module._c._get_method(name)._debug_flush_compilation_cache()

    flush()
    try:
        with torch.jit.optimized_execution(False):
            yield
    finally:
        flush()
