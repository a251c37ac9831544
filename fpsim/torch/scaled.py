"""The scaled-recipe regime of ``emulate`` (FP8 / MX): the listed products' operands quantized, all else FP32.

``ScaledMode`` casts the operands named in ``placement.SCALED_OPERANDS`` (mm, addmm, bmm, baddbmm,
convolution, forward and backward) by the run's ``fpsim.sim.scaling.ScaledCasts``: weights as
``params``, forward operands as ``activations``, the incoming gradients of the backward products as
``gradients``; a forward operand that the backward pass reads again (the saved input of a linear layer) is
cast again as an activation, along the axis that product reduces.  Every output and every other operation
stays FP32; the recipes' scales are keyed by (operand kind, module path).  A backward product whose
operands are a saved activation and a gradient is a weight-gradient product (``ScaledCasts.cast``'s
``weight_gradient``: where a recipe applies its Hadamard transform).
"""

from __future__ import annotations

import torch

from .mode import EMULATED_DTYPES, EmulationMode
from .placement import FP32 as FP32_OPS
from .placement import MATMUL, MOVE, PROMOTE, VIEW, OpPlacement

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
        kinds = {index: self._kind(args[index], node is not None) for index in op.scaled_operands}
        # a backward product of a saved forward operand and a gradient (no weight) is a weight gradient
        weight_gradient = node is not None and set(kinds.values()) == {"activations", "gradients"}
        for index, axis in op.scaled_operands.items():
            if kinds[index] is not None:
                values = args[index].detach().numpy()
                args[index] = torch.from_numpy(self.casts.cast(values, kinds[index], path, axis=axis % values.ndim,
                                                               weight_gradient=weight_gradient))
        return self.run_fp32(func, op, args, kwargs)

    handlers = {VIEW: _run, MOVE: _run, FP32_OPS: _compute, MATMUL: _compute, PROMOTE: _compute}

    def _kind(self, tensor, backward: bool):
        """The operand kind ``tensor`` is cast as in a product (None: left as it is): weights as params; in the
        backward pass, a saved forward operand as an activation and anything else as a gradient."""
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
