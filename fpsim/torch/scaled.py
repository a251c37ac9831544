"""The scaled-recipe regime of ``emulate`` (FP8 / MX): the listed products' operands quantized, all else FP32.

``ScaledMode`` casts the operands named in ``placement.SCALED_OPERANDS`` (mm, addmm, bmm, baddbmm,
convolution, forward and backward) by the run's ``fpsim.sim.scaling.ScaledCasts``: weights as
``params``, forward operands as ``activations``, the incoming gradients of the backward products as
``gradients``; a forward operand that the backward pass reads again (the saved input of a linear layer) is
cast again as an activation, along the axis that product reduces.  Every output and every other operation
stays FP32; the recipes' scales are keyed by (operand kind, module path).

Under a GPU ``accumulate`` (``Policy.tensor_core``) the listed products run on that tensor core instead of
FP32 BLAS: each operand cast into its elements and FP32 factors (``fpsim.sim.tensor_core.operand``), the
elements multiplied on the tensor core and the factors applied after (``scaled_product``: per tensor or row
in the epilogue, per block along K as FP32 promotion at each block), forward products fast-accumulated or
split as ``Policy.fast_accumulation`` says.  Convolutions are lowered to products
(``fpsim.torch.products.convolution``) and take per-tensor recipes only (tensor, delayed, none): a row or
block of a convolution's operand runs along its channels at each position, which a lowered product's
reduction (kernel window and channels) mixes; such a recipe is refused with a ValueError.
"""

from __future__ import annotations

import torch

import numpy as np

from ..sim.tensor_core import operand, scaled_product
from .mode import EMULATED_DTYPES, EmulationMode
from .placement import FP32 as FP32_OPS
from .placement import MATMUL, MOVE, PROMOTE, VIEW, OpPlacement
from .products import EXACT_OPS, convolution, to_torch

aten = torch.ops.aten

_current_node = torch._C._current_autograd_node


class ScaledMode(EmulationMode):
    """The mode of ``emulate`` under a policy with a scaling recipe (see the module docstring)."""

    def __init__(self, policy, model, casts):
        super().__init__(policy, model)
        self.casts = casts
        self._forward_operands = {}  # storage address -> the forward operand itself (held until the mode ends)

    def release(self) -> None:
        self._forward_operands.clear()

    def _run(self, func, op: OpPlacement, args, kwargs):
        return func(*args, **kwargs)

    def _compute(self, func, op: OpPlacement, args, kwargs):
        """A listed product on its cast operands, any other op as ATen runs it; float64 outputs held to FP32."""
        if op.scaled_operands is None:
            return self.run_fp32(func, op, args, kwargs)
        node = _current_node()
        path = self.paths.current(node)
        args = list(args)
        if self.policy.tensor_core is not None:
            return self._on_tensor_core(func, args, kwargs, op, node is None, path)
        for index, axis in op.scaled_operands.items():
            kind = self._kind(args[index], node is not None)
            if kind is not None:
                values = args[index].detach().numpy()
                args[index] = torch.from_numpy(self.casts.cast(values, kind, path, axis=axis % values.ndim))
        return self.run_fp32(func, op, args, kwargs)

    handlers = {VIEW: _run, MOVE: _run, FP32_OPS: _compute, MATMUL: _compute, PROMOTE: _compute}

    def _kind(self, tensor, backward: bool) -> str | None:
        """The kind ``tensor`` is cast as, an operand of a listed product: weights as params; in the backward
        pass, a saved forward operand as an activation and anything else as a gradient.  None: not cast (not an
        emulated tensor, or one of the model's buffers)."""
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in EMULATED_DTYPES:
            return None
        address = tensor.untyped_storage().data_ptr()
        if address in self.buffers:
            return None
        if address in self.params:
            return "params"
        if not backward:
            if torch.is_grad_enabled():  # held, so that no gradient can take its memory before the mode ends
                self._forward_operands[address] = tensor
            return "activations"
        return "activations" if address in self._forward_operands else "gradients"

    def _on_tensor_core(self, func, args, kwargs, op: OpPlacement, forward: bool, path: str):
        """A listed product on the policy's tensor core, its operands cast into elements and factors."""
        parts = {}
        for index, axis in op.scaled_operands.items():
            kind = self._kind(args[index], not forward)
            if kind is None:
                raise ValueError(f"{func.overloadpacket.__name__} multiplies a {args[index].dtype} tensor or a "
                                 f"buffer: a tensor core's scaled product takes the model's float32 tensors")
            values = args[index].detach().numpy()
            parts[id(args[index])] = operand(self.casts, values, kind, path, axis % values.ndim)

        def multiply(a, of_a, b, of_b):  # a and b hold the elements of the arguments of_a and of_b
            a_part, b_part = parts[id(of_a)], parts[id(of_b)]
            result = scaled_product(a_part._replace(elements=a.numpy()), b_part._replace(elements=b.numpy()),
                                    self.policy, forward=forward)
            return to_torch(result, of_a.dtype)

        op_packet = func.overloadpacket
        if op_packet in EXACT_OPS:
            bias, (a, b) = (None, args) if op_packet in (aten.mm, aten.bmm) else (args[0], args[1:3])
            out = scaled_product(parts[id(a)], parts[id(b)], self.policy, forward=forward)
            out = to_torch(out, a.dtype)
            return out if bias is None else kwargs.get("beta", 1) * bias + kwargs.get("alpha", 1) * out
        if any(part.factors.ndim for part in parts.values()):
            raise ValueError("a convolution on a tensor core takes per-tensor scaling (tensor, delayed, none); "
                             "its operands' rows or blocks run along the channels, which the lowered product mixes "
                             "with the kernel window: use a per-tensor recipe or an IEEE accumulate")
        elements = [torch.from_numpy(parts[id(arg)].elements) if id(arg) in parts else arg for arg in args]
        originals = {id(element): arg for element, arg in zip(elements, args) if id(arg) in parts}
        out = convolution(func, elements, lambda a, of_a, b, of_b: multiply(a, originals[id(of_a)], b,
                                                                            originals[id(of_b)]))
        if op_packet is aten.convolution_backward and out[2] is not None:
            # the bias gradient: the cast gradient RN32(q X) summed in FP32, as the FP32-accumulating recipe has it
            g = parts[id(args[0])]
            cast = torch.from_numpy((g.elements * np.float64(g.factors)).astype(np.float32))
            out = (*out[:2], cast.sum(dim=[d for d in range(cast.dim()) if d != 1]))
        return out

