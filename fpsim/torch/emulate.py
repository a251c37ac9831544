"""``fpsim.torch.emulate``: run any PyTorch model's forward and backward passes under a precision policy.

Inside ``with emulate(policy, model=model, recorder=recorder):`` every ATen
operation that PyTorch runs, forward and backward, goes through a
``TorchDispatchMode`` (``torch.utils._python_dispatch``, the mechanism of
PyTorch's own ``FlopCounterMode``).  The model is not changed: its tensors stay
float32 (or float64) and hold, after each operation, exactly the values the
policy's formats give (the formats' values are float32 values).

What each operation does is decided by ``fpsim.torch.placement`` (one table,
from ``torch.autocast``'s op lists) and the policy's ``placement``:

* matrix products (mm, addmm, bmm, convolution, scaled-dot-product attention
  and their backwards): every floating input rounded to its compute format
  (``policy.params`` for parameters and tensors that view them, else
  ``activations`` in the forward pass and ``gradients`` in the backward pass;
  an input already held in a low-precision format is used as it is), the
  product computed in float32, the output rounded once (the attention
  backwards' FP32 log-sum-exp input excepted; CPU flash attention also
  rounds its probabilities before P @ V, see ``_flash_attention``);
* autocast's FP32 operations (softmax, layer_norm, exp, log, sums, losses):
  computed and returned in FP32 in the forward pass;
* views and metadata: nothing done; operations that only move values (cat,
  index_select, the backwards of slicing): nothing rounded, their output in a
  low-precision format when all their inputs are;
* every other operation: its output rounded to the tensor kind's format when
  all its floating inputs are held in a low-precision format, else FP32 (type
  promotion, as autocast runs them).  Which tensors are low precision is
  tracked by the mode: a table, weakly keyed by the tensor object, of the
  format and the tensor's version counter (an in-place change outside the
  mode voids it).

Under a policy with a scaling recipe (FP8 / MX: ``fpsim.sim.policy``) the mode
does something simpler: the operands of the products listed in
``placement.SCALED_OPERANDS`` (mm, addmm, bmm, baddbmm, convolution, forward and
backward) are cast by the run's ``fpsim.sim.scaling.ScaledCasts`` (weights as
``params``, forward operands as ``activations``, the incoming gradients of the
backward products as ``gradients``; a forward operand that the backward pass
reads again, the saved input of a linear layer, is cast again as an activation,
along the axis that product reduces); every output and every other operation
stays FP32.  The recipes' scales are keyed by (operand kind, module path).

Dtypes, layouts, devices: float32 and float64 tensors are emulated.  A
float64 tensor holds what a float32 one would: a format's values where the
float32 tensor is rounded, and FP32 values where it is FP32 (every float64
output of an operation other than a view or a move is rounded to FP32 at
least, unrecorded); each operation computes in float64 before its output is
rounded, so a float64 product accumulates in float64, not in FP32.  Integer and
boolean tensors pass through.  Meta tensors are a dry run: shapes pass
through, nothing is rounded.  Any other tensor is refused with a one-line
TypeError (a float16, bfloat16, float8 or complex dtype, a sparse layout,
another device than the CPU): the formats' values are held in float32 or
float64 CPU memory and rounded through its numpy view.

With ``placement="low-precision"`` every operation except views rounds its
inputs (parameters included; the model's buffers, such as batch norm's running
statistics, stay FP32) and its outputs.

The backward pass: autocast acts in the forward pass only; on the hardware a
backward operation runs in the precision its tensors have, and autograd casts
each incoming gradient to the dtype of the tensor it belongs to.  So the
backward of an operation whose forward output was rounded (its autograd node's
sequence number is remembered) rounds its inputs (the incoming gradient) and
its outputs to ``gradients``; other backward operations follow the promotion
rule.  A matrix product's forward input that was rounded into a copy has the
copy remembered by the mode (weakly keyed by the tensor, at its version), so
the backward pass, which autograd hands the saved tensor itself, uses the same
rounded values.

One context, its own state: the tags and the copies belong to the mode of one
``with`` block and are dropped when it ends, so a tensor carries nothing from
one context into the next (a later context under another policy rounds it
afresh).  Contexts do not nest: ``emulate`` inside another ``emulate`` raises
(both modes would round every operation, one format after the other).

Forward or backward: ``torch._C._current_autograd_node()`` is the autograd node
the engine is running, None in the forward pass.  It is exact (the engine sets
it around each node it evaluates) and costs 0.15 us, where module backward
hooks wrap every module output in an extra autograd function and only mark
module boundaries.

Module paths: forward pre-hooks and hooks on every module of ``model`` keep
the stack of module paths (``"blocks.1.attn.c_attn"``; the root is ``"model"``;
operations outside ``model.forward`` are ``"(outside)"``).  Each module call
also records the interval of autograd sequence numbers its operations
created (``torch._C._autograd._get_sequence_nr()`` before and after it); in the
backward pass the running node's ``_sequence_nr()`` falls in the intervals of
the calls that created it, and the innermost one names it.  This costs two
integer reads per module call and changes nothing in the graph.

Weight gradients: a hook on every parameter of ``model`` receives the gradient
just before ``AccumulateGrad`` stores it; a backward rounding whose output is
that tensor (same storage) is recorded as ``"weight_grads"`` of the
parameter's module, the others as ``"activation_grads"``.  The backward
roundings are therefore handed to the recorder at the end of each backward
pass (``queue_callback`` of the autograd engine).  Without ``model`` every
backward rounding counts as an activation gradient and every path is
``"(outside)"``.

An FP32 compute format changes no value; with a recorder it is observed
all the same (the same tensors as a 16-bit format, rounded to FP32, which
leaves float32 values as they are), so that an FP32 run records the values a
narrower format would have to hold (their histograms, say).

Rounding: in place, on the float32 output's memory (a CPU tensor and its
``numpy()`` view share it), by fpsim's own nearest-even kernel
(``fpsim.numerics.kernels.round_nearest_array``, what ``fpsim.round`` runs for
these formats); strided tensors and other modes go through ``fpsim.round``.
Numba's kernels run on torch's thread count inside the context (with numba's
OpenMP layer the two share OpenMP's setting: any other count would change
torch's).  Cast weights are cached per parameter version, so a weight is
rounded once per step for the forward and backward products.  With a recorder,
each backward rounding keeps its tensor and a copy of its values before and
after until the end of the backward pass (about two more copies of the
gradients); without one nothing is copied.

``accumulate="native"``: products are float32 BLAS on the rounded inputs
(FP32 accumulation in the library's order: what FP16/BF16 tensor cores with an
FP32 accumulator approximate).  ``accumulate="exact"``: mm, addmm, bmm and
baddbmm (what Linear and matmul lower to) go through ``fpsim.matmul`` with the
policy's ``accumulate`` format, sequential order; in addmm/baddbmm the bias is
added in FP32 to the accumulated product before the output rounding.
Convolutions and attention have no exact path: under ``"exact"`` with an
accumulation format other than FP32 they raise.
"""

from __future__ import annotations

import bisect
import functools
import math
from contextlib import contextmanager

import numba
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils.weak import WeakIdKeyDictionary

from ..numerics import kernels
from ..numerics.formats import FP32, Format
from ..numerics.rounding import kernel_params
from ..numerics.rounding import round as round_to
from ..ops.reductions import matmul as fpsim_matmul
from ..sim.policy import Policy
from ..sim.scaling import ScaledCasts
from .placement import FP32 as FP32_OPS
from .placement import MATMUL, MOVE, VIEW, placement_of, scaled_operands_of

ACCUMULATE_MODES = ("native", "exact")
ROOT, OUTSIDE = "model", "(outside)"
_MAX_REMEMBERED = 1 << 16
"""Module calls and low-precision nodes remembered for the backward passes (each follows its forward)."""
_EMULATED_DTYPES = (torch.float32, torch.float64)
"""The dtypes whose tensors hold the formats' values (see the module docstring); others are refused."""
_EXACT_OPS = ("mm", "addmm", "bmm", "baddbmm")
_CPU_FLASH_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_current_node = torch._C._current_autograd_node
_next_sequence_nr = torch._C._autograd._get_sequence_nr


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
        if isinstance(running, _EmulationMode):
            raise RuntimeError(f"emulate contexts do not nest: one under policy {running.policy.name} is running; "
                               f"leave its with block before starting another")
    policy = Policy.coerce(policy)
    if policy.scaling is not None and casts is None:
        casts = ScaledCasts(policy, recorder)
    if policy.scaling is not None and accumulate != "native":
        raise ValueError("a scaling recipe's products accumulate in FP32: use accumulate='native'")
    if accumulate not in ACCUMULATE_MODES:
        raise ValueError(f"accumulate must be one of {', '.join(ACCUMULATE_MODES)}, got {accumulate!r}")
    if accumulate == "native" and policy.accumulate != FP32:
        raise ValueError(f"policy {policy.name} accumulates in {policy.accumulate}: native products accumulate "
                         f"in FP32, use accumulate='exact'")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    mode = _EmulationMode(policy, model, recorder, accumulate, casts if policy.scaling is not None else None)
    # With numba's OpenMP threading layer a kernel launch sets OpenMP's thread count, which torch's
    # operations then use: numba runs on torch's thread count, so that neither changes the other's.
    threads, torch_threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    handles = mode.attach()
    try:
        with mode:
            yield mode
    finally:
        for handle in handles:
            handle.remove()
        mode.release()
        numba.set_num_threads(threads)
        torch.set_num_threads(torch_threads)


class _EmulationMode(TorchDispatchMode):
    """The dispatch mode behind ``emulate``; one instance per ``with`` block."""

    def __init__(self, policy: Policy, model, recorder, accumulate: str, casts=None):
        super().__init__()
        self.policy = policy
        self.casts = casts
        self._forward_operands = {}  # storage address -> the forward operand itself (held until the mode ends)
        self.model = model
        self.recorder = recorder
        self.exact = accumulate == "exact"
        self.low_everywhere = policy.placement == "low-precision"
        self.skip_fp32 = recorder is None  # with a recorder FP32 is observed like any format (see the docstring)
        self.params = {}  # storage address -> parameter
        self.buffers = set()  # storage addresses of the model's buffers (running statistics): left as they are
        self._cast_params = {}  # storage address -> (version, rounded copy)
        self._stack = []  # module paths of the calls in progress (forward)
        self._calls = []  # (first sequence nr, end sequence nr or None, path), in call order
        self._call_starts = []
        self._pending = {}  # storage address -> [(path, before, after, fmt, tensor)]: to classify
        self._flush_task = None
        self._low_nodes = set()  # sequence numbers of the autograd nodes of low-precision forward ops
        self._tags = WeakIdKeyDictionary()  # tensor -> (format, version): held in a low-precision format
        self._copies = WeakIdKeyDictionary()  # tensor -> (version, its rounded copy): a product's input

    def release(self) -> None:
        """The end of the ``with`` block: drop every tag, copy and cast, so that nothing outlives the context."""
        for held in (self._tags, self._copies, self._cast_params, self._forward_operands):
            held.clear()

    # --- module paths, parameters and hooks ---------------------------------
    def attach(self) -> list:
        """Hook ``model``'s modules and parameters; returns the handles to remove."""
        if self.model is None:
            return []
        handles = []
        for name, module in self.model.named_modules():
            path = name or ROOT
            handles.append(module.register_forward_pre_hook(self._pre_hook(path)))
            handles.append(module.register_forward_hook(self._post_hook(), always_call=True))
            for buffer in module.buffers(recurse=False):
                self.buffers.add(buffer.untyped_storage().data_ptr())
            for parameter in module.parameters(recurse=False):
                address = parameter.untyped_storage().data_ptr()
                if address in self.params:  # a tied weight: named after its first owner
                    continue
                self.params[address] = parameter
                if self.recorder is not None and parameter.requires_grad:
                    handles.append(parameter.register_hook(self._mark_weight_grad(path)))
        return handles

    def _pre_hook(self, path):
        def hook(module, args):
            if not self._stack and len(self._calls) > _MAX_REMEMBERED:  # forget the oldest passes' calls
                del self._calls[:_MAX_REMEMBERED // 2], self._call_starts[:_MAX_REMEMBERED // 2]
            self._stack.append(path)
            self._call_starts.append(_next_sequence_nr())
            self._calls.append([self._call_starts[-1], None, path])
        return hook

    def _post_hook(self):
        def hook(module, args, output):
            self._stack.pop()
            for call in reversed(self._calls):  # the innermost open call is this one
                if call[1] is None:
                    call[1] = _next_sequence_nr()
                    break
        return hook

    def _backward_path(self, node) -> str:
        """The innermost module call whose forward created ``node``."""
        sequence_nr = node._sequence_nr()
        index = bisect.bisect_right(self._call_starts, sequence_nr) - 1
        while index >= 0:
            start, end, path = self._calls[index]
            if end is None or sequence_nr < end:
                return path
            index -= 1
        return OUTSIDE

    def _mark_weight_grad(self, path):
        def hook(grad):  # runs just before AccumulateGrad: the roundings that made ``grad`` are weight gradients
            for _, before, after, fmt, _ in self._pending.pop(grad.untyped_storage().data_ptr(), ()):
                self.recorder.rounded("weight_grads", path, before, after, fmt)
        return hook

    def _flush(self) -> None:
        """End of a backward pass: the roundings no parameter hook claimed were activation gradients."""
        pending, self._pending, self._flush_task = self._pending, {}, None
        for entries in pending.values():
            for path, before, after, fmt, _ in entries:
                self.recorder.rounded("activation_grads", path, before, after, fmt)

    # --- rounding -----------------------------------------------------------
    def _round(self, tensor: torch.Tensor, fmt: Format, kind: str | None, path, source=None) -> None:
        """Round ``tensor`` (or ``source``, into ``tensor``) to ``fmt`` in place and tag it; observed by the
        recorder when there is one (unless ``kind`` is None: a weight cast to ``policy.params``, which is
        the training engine's to record)."""
        array = tensor.detach().numpy()
        values = array if source is None else source.detach().numpy()
        before = values.copy() if self.recorder is not None else None
        round_into(values, array, fmt)
        self._tags[tensor] = (fmt, tensor._version)
        if before is None or kind is None:
            return
        if kind == "activations":
            self.recorder.rounded(kind, path, before, array, fmt)
            return
        # A weight gradient is known only when its parameter's hook sees it (or, for the others, at the end
        # of the backward pass).  Holding the tensor keeps its memory, so its address names it until then.
        address = tensor.untyped_storage().data_ptr()
        self._pending.setdefault(address, []).append((path, before, array.copy(), fmt, tensor))
        task = torch._C._current_graph_task_id()
        if self._flush_task != task:
            self._flush_task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._flush)

    def _cast_param(self, tensor: torch.Tensor, address: int) -> torch.Tensor:
        """``tensor`` (a parameter or a view of one) with the parameter's values rounded to ``policy.params``."""
        parameter = self.params[address]
        cached = self._cast_params.get(address)
        if cached is None or cached[0] != parameter._version:
            copy = torch.empty_like(parameter)  # the parameter's strides: its views map onto the copy
            self._round(copy, self.policy.params, None, None, source=parameter)
            cached = self._cast_params[address] = (parameter._version, copy)
        copy = cached[1]
        return copy.as_strided(tensor.size(), tensor.stride(),
                               tensor.storage_offset() - parameter.storage_offset() + copy.storage_offset())

    def _round_input(self, tensor, fmt, kind, path):
        """An input of a low-precision op: ``tensor`` rounded (a copy), or itself when already in a format."""
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _EMULATED_DTYPES:
            return tensor
        address = tensor.untyped_storage().data_ptr()
        if address in self.params:
            if self.policy.params == FP32 and tensor.dtype == torch.float32:  # float32 values are FP32 values
                return tensor
            return self._cast_param(tensor, address)
        if address in self.buffers:  # a copy would lose batch norm's in-place update of its statistics
            return tensor
        if self._format(tensor) is not None:
            return tensor
        if fmt == FP32 and tensor.dtype == torch.float32:
            # nothing to round: observed in place (a contiguous copy could change BLAS's order)
            if not self.skip_fp32:
                self._round(tensor, fmt, kind, path)
            return tensor
        # Autograd saves the tensor itself, not the copy: the backward pass finds the forward's copy here,
        # and a gradient that feeds several ops is rounded once.
        cached = self._copies.get(tensor)
        if cached is not None and cached[0] == tensor._version:
            return cached[1]
        copy = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        self._round(copy, fmt, kind, path, source=tensor if tensor.is_contiguous() else tensor.contiguous())
        self._copies[tensor] = (tensor._version, copy)
        return copy

    # --- which tensors hold a format's values -------------------------------
    def _format(self, tensor: torch.Tensor) -> Format | None:
        """The low-precision format ``tensor`` is known to hold (tagged at its current version), or None."""
        tag = self._tags.get(tensor)
        return tag[0] if tag is not None and tag[1] == tensor._version else None

    def _tag_all(self, tensors, fmt: Format) -> None:
        for tensor in tensors:
            self._tags[tensor] = (fmt, tensor._version)

    def _low_format(self, args) -> Format | None:
        """Type promotion: the format of the op's floating tensor inputs (0-dim ones only when there are no
        others) when every one of them holds a low-precision format, else None."""
        dimensioned, scalars = [], []
        for arg in args:
            for tensor in (arg if isinstance(arg, (list, tuple)) else (arg,)):
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    (dimensioned if tensor.dim() else scalars).append(tensor)
        formats = [self._format(tensor) for tensor in dimensioned or scalars]
        return formats[0] if formats and None not in formats else None

    # --- the dispatch -------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        placement, first_only, mutates, fp32_inputs = placement_of(func)
        if placement == VIEW:
            out = func(*args, **kwargs)
            fmt = self._format(args[0]) if args and isinstance(args[0], torch.Tensor) else None
            if fmt is not None:
                self._tag_all(tensors_of(out), fmt)
            return out
        if _dry_run(func, args, kwargs):
            return func(*args, **kwargs)
        if self.casts is not None:
            return self._scaled_dispatch(func, placement, mutates, args, kwargs)
        if placement == MOVE:
            out = func(*args, **kwargs)
            fmt = self._low_format(args)
            if fmt is not None:
                self._tag_all(tensors_of(out), fmt)
            return out
        node = _current_node()
        if node is None:
            if placement == FP32_OPS and not self.low_everywhere:
                out = func(*args, **kwargs)
                self._hold_fp32(tensors_of(out), mutates)
                return out
            fmt, kind = self.policy.activations, "activations"
            low = placement == MATMUL or self.low_everywhere
            path = (self._stack[-1] if self._stack else OUTSIDE) if self.recorder is not None else None
        else:
            fmt, kind = self.policy.gradients, "activation_grads"
            low = placement == MATMUL or self.low_everywhere or node._sequence_nr() in self._low_nodes
            path = self._backward_path(node) if self.recorder is not None else None
        creates_node = node is None and torch.is_grad_enabled() and _any_requires_grad(args)
        if low:
            args = tuple(arg if i in fp32_inputs else _map_tensors(arg, self._round_input, fmt, kind, path)
                         for i, arg in enumerate(args))
            if self.exact and placement == MATMUL:
                out = self._matmul(func, args, kwargs)
            elif func is _CPU_FLASH_ATTENTION and fmt != FP32 and _plain_attention(args, kwargs):
                out = _flash_attention(*args[:3], args[4] if len(args) > 4 else False, kwargs.get("scale"), fmt)
            else:
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
            low = self._low_format(args) is not None
        outputs = tensors_of(out)
        if not low or (fmt == FP32 and self.skip_fp32):
            self._hold_fp32(outputs, mutates)
            return out
        rounded = outputs[:1] if first_only else outputs
        for output in rounded:
            if output.dtype in _EMULATED_DTYPES and _roundable(output) and not (
                    mutates and output.untyped_storage().data_ptr() in self.params):
                self._round(output, fmt, kind, path)
        self._hold_fp32(outputs[len(rounded):], mutates)
        if creates_node:
            self._remember_low_node(_next_sequence_nr() - 1)
        return out

    def _hold_fp32(self, outputs, mutates: bool) -> None:
        """The float64 ones among an op's ``outputs`` rounded to FP32 in place (not tagged, not recorded): where
        a float32 tensor holds FP32 values, a float64 one does too.  Float32 outputs are left as they are."""
        for output in outputs:
            if output.dtype == torch.float64 and _roundable(output) and not (
                    mutates and output.untyped_storage().data_ptr() in self.params):
                array = output.detach().numpy()
                round_into(array, array, FP32)

    def _scaled_dispatch(self, func, placement: str, mutates: bool, args, kwargs):
        """Under a scaling recipe: a listed product's operands cast by ``casts``, everything else in FP32."""
        operands = scaled_operands_of(func)
        if operands is None:
            out = func(*args, **kwargs)
            if placement != MOVE:
                self._hold_fp32(tensors_of(out), mutates)
            return out
        node = _current_node()
        if node is None:
            path = self._stack[-1] if self._stack else OUTSIDE
        else:
            path = self._backward_path(node)
        args = list(args)
        for index, axis in operands.items():
            args[index] = self._scaled_operand(args[index], axis, node is not None, path)
        out = func(*args, **kwargs)
        self._hold_fp32(tensors_of(out), mutates)
        return out

    def _scaled_operand(self, tensor, axis: int, backward: bool, path: str):
        """``tensor`` cast as an operand of the product at ``path``: weights as params; in the backward pass, a
        saved forward operand as an activation and anything else as a gradient."""
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _EMULATED_DTYPES:
            return tensor
        address = tensor.untyped_storage().data_ptr()
        if address in self.buffers:
            return tensor
        if address in self.params:
            kind = "params"
        elif not backward:
            kind = "activations"
            if torch.is_grad_enabled():  # held, so that no gradient can take its memory before the mode ends
                self._forward_operands[address] = tensor
        else:
            kind = "activations" if address in self._forward_operands else "gradients"
        values = tensor.detach().numpy()
        return torch.from_numpy(self.casts.cast(values, kind, path, axis=axis % values.ndim))

    def _remember_low_node(self, sequence_nr: int) -> None:
        """The autograd node just created computes in low precision: in the backward pass its incoming
        gradients are rounded (autograd casts a gradient to its tensor's dtype) and so are its outputs."""
        self._low_nodes.add(sequence_nr)
        if len(self._low_nodes) > _MAX_REMEMBERED:
            self._low_nodes = {nr for nr in self._low_nodes if nr > sequence_nr - _MAX_REMEMBERED // 2}

    def _matmul(self, func, args, kwargs):
        """mm / addmm / bmm / baddbmm through ``fpsim.matmul`` with the policy's accumulation format."""
        name = func._schema.name.split("::")[-1]
        accumulate = self.policy.accumulate
        if name not in _EXACT_OPS:
            if accumulate != FP32:
                raise ValueError(f"accumulate='exact' covers {', '.join(_EXACT_OPS)} (Linear, matmul); "
                                 f"{name} has no exact path: use a policy accumulating in FP32")
            return func(*args, **kwargs)
        bias, (a, b) = (None, args) if name in ("mm", "bmm") else (args[0], args[1:3])
        a, b = a.detach().numpy(), b.detach().numpy()
        if a.ndim == 2:
            product = fpsim_matmul(a, b, accumulate=accumulate)
        else:
            product = np.stack([fpsim_matmul(x, y, accumulate=accumulate) for x, y in zip(a, b)])
        out = torch.from_numpy(np.ascontiguousarray(product, dtype=a.dtype))
        if bias is not None:
            out = kwargs.get("beta", 1) * bias + kwargs.get("alpha", 1) * out
        return out


def round_into(values: np.ndarray, out: np.ndarray, fmt: Format) -> None:
    """``out[...] = fpsim.round(values, fmt)`` without a temporary (``out`` may be ``values``).

    Float32 C-contiguous arrays and a format of fewer significant bits go straight to fpsim's
    nearest-even kernel, the one ``fpsim.round`` runs for them, on as many threads as torch uses.
    """
    if fmt == FP32 and values.dtype == np.float32:  # float32 values are FP32 values
        if out is not values:
            out[...] = values
        return
    nearest = _nearest_args(fmt)
    if nearest is None or values.dtype != np.float32 or out.dtype != np.float32 or not (
            values.flags.c_contiguous and out.flags.c_contiguous):
        out[...] = round_to(values, fmt)
        return
    kernels.round_nearest_array(values.reshape(-1), out.reshape(-1).view(np.uint32), nearest)


@functools.lru_cache(maxsize=None)
def _nearest_args(fmt: Format):
    """The nearest kernel's constants for float32 input, or None where it does not apply."""
    if not fmt.fits_float32:
        return None
    params = kernel_params(fmt, np.float32)
    return params.nearest_args() if params.dropped_bits >= 1 else None


@functools.lru_cache(maxsize=8)
def _causal_mask(rows: int, columns: int) -> torch.Tensor:
    """0 on and below the diagonal, -inf above: added to the scores (one pass, cheaper than masked_fill)."""
    return torch.full((rows, columns), -math.inf).triu(1)


def _plain_attention(args, kwargs) -> bool:
    """No dropout and no explicit mask: the cases ``_flash_attention`` computes."""
    return not (len(args) > 3 and args[3]) and kwargs.get("attn_mask") is None


def _flash_attention(query, key, value, is_causal: bool, scale, fmt: Format):
    """(output, logsumexp) of ATen's CPU flash attention, its probabilities rounded to ``fmt`` before P @ V.

    FlashAttention (FA2 on CUDA, ATen's CPU kernel) computes S = scale * Q K^T, and the row max m and the
    row sum l of exp(S - m), in FP32, converts P = exp(S - m) to the inputs' format for the second
    product, accumulates P V in FP32 and divides by l at the end; this is that for one key block (the
    CPU kernel's hold 512 keys; longer sequences rescale block by block).  The log-sum-exp m + log l,
    which the backward kernel reads, is returned in the kernel's layout (B, nh, T) over (B, T, nh) memory.
    """
    scale = scale or 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)  # (B, nh, T, S)
    if is_causal:
        scores.add_(_causal_mask(*scores.shape[-2:]))
    top = scores.amax(dim=-1, keepdim=True)
    probabilities = torch.exp_(scores.sub_(top))
    total = probabilities.sum(dim=-1, keepdim=True)
    round_into(probabilities.numpy(), probabilities.numpy(), fmt)
    out = torch.matmul(probabilities, value).div_(total)  # (B, nh, T, hs)
    B, heads, T = out.shape[:3]
    logsumexp = torch.empty(B, T, heads, dtype=out.dtype).permute(0, 2, 1)
    logsumexp.copy_((top + total.log()).squeeze(-1))
    return out, logsumexp


def _dry_run(func, args, kwargs) -> bool:
    """Whether the op runs on meta tensors (shapes only: nothing to round).  Raises TypeError, one line, for a
    tensor emulate cannot hold a format's values in: a floating or complex dtype other than float32 and
    float64, a layout other than strided (sparse), a device other than the CPU."""
    meta = False
    for arg in (*args, *kwargs.values()):
        for tensor in (arg if isinstance(arg, (list, tuple)) else (arg,)):
            if not isinstance(tensor, torch.Tensor):
                continue
            if tensor.layout != torch.strided:
                raise TypeError(f"emulate rounds dense tensors: {func.overloadpacket} got a {tensor.layout} "
                                f"(sparse) tensor; pass it as tensor.to_dense()")
            if tensor.is_meta:
                meta = True
            elif not tensor.is_cpu:
                raise TypeError(f"emulate rounds CPU tensors: {func.overloadpacket} got one on "
                                f"{tensor.device}; move the model and its inputs to the CPU (.cpu())")
            if (tensor.is_floating_point() or tensor.is_complex()) and tensor.dtype not in _EMULATED_DTYPES:
                raise TypeError(f"emulate holds the formats' values in float32 or float64 tensors: "
                                f"{func.overloadpacket} got a {tensor.dtype} tensor; keep the model and its "
                                f"inputs in float32 (model.float()), the policy gives the formats")
    return meta


def _roundable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s values can be rounded in place through numpy (dense, in CPU memory)."""
    return tensor.layout == torch.strided and tensor.is_cpu


def tensors_of(out) -> tuple:
    """The tensors an op returned (one, several, or none: ``item()``, ``equal`` return Python values)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)):
        return tuple(t for t in out if isinstance(t, torch.Tensor))
    return ()


def _any_requires_grad(args) -> bool:
    return any(isinstance(tensor, torch.Tensor) and tensor.requires_grad
               for arg in args for tensor in (arg if isinstance(arg, (list, tuple)) else (arg,)))


def _map_tensors(arg, function, *extra):
    if isinstance(arg, (list, tuple)):
        return type(arg)(function(item, *extra) for item in arg)
    return function(arg, *extra)
