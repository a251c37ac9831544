"""The dispatch mode both of ``emulate``'s regimes build on: one handler per placement, looked up per op.

``EmulationMode.__torch_dispatch__`` checks the op's tensors (``dry_run``), reads the op's placement
(``fpsim.torch.placement``) and calls the regime's handler for it (``handlers``: placement -> method).
The base holds what both regimes need: the policy, the model's parameters and buffers (by storage
address), the module paths, and the rounding to FP32 of float64 outputs.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..numerics.formats import FP32
from ..sim.policy import Policy
from .placement import COMPOSITE, PLACEMENTS, VIEW, OpPlacement, placement_of
from .rounding import round_into
from .tracking import ROOT, ModulePaths

EMULATED_DTYPES = (torch.float32, torch.float64)
"""The dtypes whose tensors hold the formats' values (see ``fpsim.torch.emulate``); others are refused."""


class EmulationMode(TorchDispatchMode):
    """The base of the regimes' modes; one instance per ``with`` block.  A subclass sets ``handlers``, a
    method ``(self, func, op: OpPlacement, args, kwargs) -> output`` for each placement in ``PLACEMENTS``."""

    handlers: dict = {}
    other_devices = False
    """Whether the regime rounds float32 tensors on devices other than the CPU (``round_into``'s torch-native
    path); else they are refused (``dry_run``)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if set(cls.handlers) != set(PLACEMENTS):
            raise TypeError(f"{cls.__name__}.handlers must cover the placements {', '.join(PLACEMENTS)}")

    def __init__(self, policy: Policy, model):
        super().__init__()
        self.policy = policy
        self.model = model
        self.paths = ModulePaths()
        self.params = {}  # storage address -> parameter
        self.param_paths = []  # (module path, parameter): each parameter under its first owner
        self.buffers = set()  # storage addresses of the model's buffers (running statistics): left as they are

    def attach(self) -> list:
        """Hook ``model``'s modules; returns the handles to remove."""
        if self.model is None:
            return []
        for name, module in self.model.named_modules():
            for buffer in module.buffers(recurse=False):
                self.buffers.add(buffer.untyped_storage().data_ptr())
            for parameter in module.parameters(recurse=False):
                address = parameter.untyped_storage().data_ptr()
                if address not in self.params:  # a tied weight: named after its first owner
                    self.params[address] = parameter
                    self.param_paths.append((name or ROOT, parameter))
        return self.paths.attach(self.model)

    def release(self) -> None:
        """The end of the ``with`` block: drop what the mode holds, so that nothing outlives the context."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = placement_of(func, self.policy.placement)
        if op.composite:  # reached whole (inference mode): ATen's decomposition, its parts placed as with autograd
            with self:
                return func._op_dk(COMPOSITE, *args, **kwargs)
        if op.placement != VIEW and dry_run(func, args, kwargs, self.other_devices):
            return func(*args, **kwargs)
        return self.handlers[op.placement](self, func, op, args, kwargs)

    def hold_fp32(self, outputs, mutates: bool) -> None:
        """The float64 ones among an op's ``outputs`` rounded to FP32 in place (not tagged, not recorded): where
        a float32 tensor holds FP32 values, a float64 one does too.  Float32 outputs are left as they are."""
        for output in outputs:
            if output.dtype == torch.float64 and roundable(output) and not (
                    mutates and output.untyped_storage().data_ptr() in self.params):
                round_into(output, output, FP32)

    def run_fp32(self, func, op: OpPlacement, args, kwargs):
        """The op as ATen runs it, its float64 outputs held to FP32."""
        out = func(*args, **kwargs)
        self.hold_fp32(tensors_of(out), op.mutates)
        return out


def dry_run(func, args, kwargs, other_devices: bool = False) -> bool:
    """Whether the op runs on meta tensors (shapes only: nothing to round).  Raises TypeError, one line, for a
    tensor emulate cannot hold a format's values in: a floating or complex dtype other than float32 and
    float64, a layout other than strided (sparse), a device other than the CPU (unless ``other_devices``:
    then a float32 tensor on any device, rounded by ``round_into``'s torch-native path)."""
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
            elif not tensor.is_cpu and not (other_devices and (tensor.dtype == torch.float32 or not (
                    tensor.is_floating_point() or tensor.is_complex()))):
                held = "float32 tensors there" if other_devices else "CPU tensors"
                raise TypeError(f"emulate rounds {held}: {func.overloadpacket} got a {tensor.dtype} tensor on "
                                f"{tensor.device}; move the model and its inputs to the CPU (.cpu())")
            if (tensor.is_floating_point() or tensor.is_complex()) and tensor.dtype not in EMULATED_DTYPES:
                raise TypeError(f"emulate holds the formats' values in float32 or float64 tensors: "
                                f"{func.overloadpacket} got a {tensor.dtype} tensor; keep the model and its "
                                f"inputs in float32 (model.float()), the policy gives the formats")
    return meta


def roundable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds values to round in place (dense, not meta: ``round_into`` takes it)."""
    return tensor.layout == torch.strided and not tensor.is_meta


def tensors_of(out) -> tuple:
    """The tensors an op returned (one, several, or none: ``item()``, ``equal`` return Python values)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (list, tuple)):
        return tuple(t for t in out if isinstance(t, torch.Tensor))
    return ()


def tensor_args(args):
    """The tensors among an op's arguments, one level of lists included."""
    for arg in args:
        for tensor in (arg if isinstance(arg, (list, tuple)) else (arg,)):
            if isinstance(tensor, torch.Tensor):
                yield tensor
