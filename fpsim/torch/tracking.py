"""Which module, and which kind of tensor, each rounding in an ``emulate`` context is recorded under.

``ModulePaths`` names the module whose forward created the running operation, in the forward and the
backward pass; ``GradientKinds`` sorts the backward pass's roundings into weight and activation gradients.
Both attach hooks to the model and change nothing in its graph.
"""

from __future__ import annotations

import bisect
import warnings

import torch

ROOT, OUTSIDE = "model", "(outside)"
"""The path of the model itself, and of operations run outside its ``forward``."""
MAX_REMEMBERED = 1 << 16
"""Module calls and low-precision nodes remembered for the backward passes (each follows its forward)."""

_next_sequence_nr = torch._C._autograd._get_sequence_nr


class ModulePaths:
    """The innermost module call in progress (forward) or whose forward created the running autograd node
    (backward), as its path in ``model.named_modules()`` (``"blocks.1.attn.c_attn"``; ``ROOT``; ``OUTSIDE``).

    Forward pre-hooks and hooks keep the stack of calls and record the interval of autograd sequence
    numbers each call's operations created (``_get_sequence_nr()`` before and after it); in the backward
    pass the running node's ``_sequence_nr()`` falls in the intervals of the calls that created it, and the
    innermost one names it: two integer reads per module call, nothing added to the graph.
    ``torch.utils.module_tracker.ModuleTracker`` does not serve: its ``parents`` is a set, not a stack, and
    in the backward pass it enters a module when its outputs' gradients are ready and leaves it when its
    inputs' are, so a module whose inputs need no gradient (an embedding) never leaves and the innermost
    module is undefined (in the GPT, ``wte``'s backward runs with both ``wpe`` and ``wte`` entered); it also
    prefixes paths with the class name and hooks every module of the process, not only ``model``'s.
    A module reused in several places has one path (its first in ``named_modules``), as in both.
    """

    def __init__(self):
        self._stack = []  # module paths of the calls in progress (forward)
        self._calls = []  # [first sequence nr, end sequence nr or None, path], in call order
        self._call_starts = []

    def attach(self, model) -> list:
        """Hook every module of ``model`` (None, or a TorchScript module: every path is ``OUTSIDE``); returns
        the handles to remove."""
        if model is None or not hookable(model):
            return []
        handles = []
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(self._entered(name or ROOT)))
            handles.append(module.register_forward_hook(self._left, always_call=True))
        return handles

    def current(self, node) -> str:
        """The path of the running operation: ``node`` is the running autograd node, None in the forward pass."""
        if node is None:
            return self._stack[-1] if self._stack else OUTSIDE
        sequence_nr = node._sequence_nr()
        index = bisect.bisect_right(self._call_starts, sequence_nr) - 1
        while index >= 0:
            start, end, path = self._calls[index]
            if end is None or sequence_nr < end:
                return path
            index -= 1
        return OUTSIDE

    def _entered(self, path: str):
        def hook(module, args):
            if not self._stack and len(self._calls) > MAX_REMEMBERED:  # forget the oldest passes' calls
                del self._calls[:MAX_REMEMBERED // 2], self._call_starts[:MAX_REMEMBERED // 2]
            self._stack.append(path)
            self._call_starts.append(_next_sequence_nr())
            self._calls.append([self._call_starts[-1], None, path])
        return hook

    def _left(self, module, args, output) -> None:
        self._stack.pop()
        for call in reversed(self._calls):  # the innermost open call is this one
            if call[1] is None:
                call[1] = _next_sequence_nr()
                break


def hookable(model) -> bool:
    """Whether ``model``'s modules take forward hooks; for a TorchScript module, False and one warning line.

    A scripted module (``torch.jit.script`` / ``trace``, a saved ``torch.jit.load``) runs in TorchScript's
    interpreter, which calls no Python hook (``register_forward_pre_hook is not supported on
    ScriptModules``), and torch exposes no module scope of the running op to Python (the interpreter's module
    hierarchy reaches only its profiler).  Its ``named_modules`` and parameters are there, so weight
    gradients keep their module paths; the other entries are filed under ``OUTSIDE``.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return True
    warnings.warn(f"fpsim: {type(model).__name__} is a TorchScript module, whose submodules take no hooks: its "
                  f"activations are attributed to {OUTSIDE!r} (pass the eager nn.Module for module paths)",
                  stacklevel=4)
    return False


class GradientKinds:
    """The backward pass's roundings, handed to ``recorder`` as ``"weight_grads"`` of a parameter's module or
    as ``"activation_grads"``.

    A hook on every parameter receives its gradient just before ``AccumulateGrad`` stores it; a rounding
    whose output is that tensor (the same storage) was a weight gradient.  So the roundings wait, each
    holding its tensor (whose memory its storage address names until then), and those no parameter claimed
    are activation gradients, handed over at the end of the backward pass (``queue_callback`` of the
    autograd engine).
    """

    def __init__(self, recorder):
        self.recorder = recorder
        self._pending = {}  # storage address -> [(path, before, after, fmt, tensor)]
        self._flush_task = None

    def attach(self, parameters) -> list:
        """Hook each (path, parameter) that requires a gradient; returns the handles to remove."""
        return [parameter.register_hook(self._weight_grad(path))
                for path, parameter in parameters if parameter.requires_grad]

    def add(self, tensor: torch.Tensor, path: str, before, after, fmt) -> None:
        """A backward rounding of ``tensor`` at ``path``, from ``before`` to ``after`` (copies) in ``fmt``."""
        address = tensor.untyped_storage().data_ptr()
        self._pending.setdefault(address, []).append((path, before, after, fmt, tensor))
        task = torch._C._current_graph_task_id()
        if self._flush_task != task:
            self._flush_task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._flush)

    def _weight_grad(self, path: str):
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
