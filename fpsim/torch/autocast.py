"""The autocast-style regime of ``emulate``: each op's inputs and output rounded as its placement says.

``AutocastMode`` rounds the inputs of matrix products to their compute format (weights to
``policy.params``, else ``activations`` forward and ``gradients`` backward), computes the product in FP32
(or exactly; CPU flash attention rounds its probabilities before P @ V: ``fpsim.torch.products``) and
rounds its output once (every floating tensor argument is an input, keyword ones such as attention's
``attn_mask`` too, as autocast casts them); runs autocast's FP32 ops in FP32 in the forward pass; rounds any
other op's output when all its floating inputs hold a low-precision format (type promotion).  Which tensors
hold one is a table weakly keyed by the tensor (its format and version counter: an in-place change outside
the mode voids it; an inference tensor has no counter, and an op of the mode writing into a tensor voids
what the mode held of it); the backward of an op whose forward was rounded rounds its incoming gradients and its outputs
(its node's sequence number is remembered).  A weight is rounded once per version into a cached copy, and
a product's rounded input into a copy the backward pass finds again (autograd saves the tensor itself).
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..numerics.formats import FP32, Format
from .mode import EMULATED_DTYPES, EmulationMode, roundable, tensor_args, tensors_of
from .placement import FP32 as FP32_OPS
from .placement import MATMUL, MOVE, PROMOTE, VIEW, OpPlacement
from .products import exact_product, flash_attention_of, is_plain_attention
from .rounding import round_into
from .tracking import MAX_REMEMBERED, GradientKinds

_current_node = torch._C._current_autograd_node
_next_sequence_nr = torch._C._autograd._get_sequence_nr


class AutocastMode(EmulationMode):
    """The mode of ``emulate`` under a policy without a scaling recipe (see the module docstring)."""

    def __init__(self, policy, model, recorder, accumulate: str):
        super().__init__(policy, model)
        self.recorder = recorder
        self.gradient_kinds = GradientKinds(recorder) if recorder is not None else None
        self.exact = accumulate == "exact"
        self.other_devices = not self.exact  # the exact products run through numpy
        self.low_everywhere = policy.placement == "low-precision"
        self.skip_fp32 = recorder is None  # with a recorder FP32 is observed like any format (see emulate)
        self._cast_params = {}  # storage address -> (version, rounded copy)
        self._low_nodes = set()  # sequence numbers of the autograd nodes of low-precision forward ops
        self._tags = WeakIdKeyDictionary()  # tensor -> (format, version): held in a low-precision format
        self._copies = WeakIdKeyDictionary()  # tensor -> (version, its rounded copy): a product's input

    def attach(self) -> list:
        handles = super().attach()
        if self.gradient_kinds is not None:
            handles += self.gradient_kinds.attach(self.param_paths)
        return handles

    def release(self) -> None:
        for held in (self._tags, self._copies, self._cast_params):
            held.clear()

    # --- the handlers, by placement -----------------------------------------
    def _view(self, func, op: OpPlacement, args, kwargs):
        """A view holds its base's format."""
        out = func(*args, **kwargs)
        fmt = self._format(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        if fmt is not None:
            self._tag_all(tensors_of(out), fmt)
        return out

    def _move(self, func, op: OpPlacement, args, kwargs):
        """Moved values hold their inputs' format when all the inputs hold it; nothing rounded."""
        out = func(*args, **kwargs)
        fmt = self._low_format(args)
        if fmt is not None:
            self._tag_all(tensors_of(out), fmt)
        return out

    def _fp32(self, func, op: OpPlacement, args, kwargs):
        """Autocast's FP32 ops: FP32 in the forward pass (unless every op is low precision), else promoted."""
        if _current_node() is None and not self.low_everywhere:
            out = self.run_fp32(func, op, args, kwargs)
            if op.mutates:
                self._forget(tensors_of(out))
            return out
        return self._compute(func, op, args, kwargs)

    def _compute(self, func, op: OpPlacement, args, kwargs):
        """A product, a promoted op, or a rounded FP32 op: inputs rounded where the op is low precision, its
        output rounded when it is or when all its inputs hold a low-precision format."""
        node = _current_node()
        if node is None:
            fmt, kind = self.policy.activations, "activations"
            low = op.placement == MATMUL or self.low_everywhere
        else:
            fmt, kind = self.policy.gradients, "activation_grads"
            low = op.placement == MATMUL or self.low_everywhere or node._sequence_nr() in self._low_nodes
        path = self.paths.current(node) if self.recorder is not None else None
        creates_node = node is None and torch.is_grad_enabled() and any(t.requires_grad for t in tensor_args(args))
        rounds_inputs = low
        if rounds_inputs:
            args = tuple(arg if i in op.fp32_inputs else _map_tensors(arg, self._round_input, fmt, kind, path)
                         for i, arg in enumerate(args))
            kwargs = {name: _map_tensors(arg, self._round_input, fmt, kind, path) for name, arg in kwargs.items()}
            out = self._product(func, op, args, kwargs, fmt)
        else:
            out = func(*args, **kwargs)
        outputs = tensors_of(out)
        if op.mutates:
            self._forget(outputs)
        if not rounds_inputs:
            low = self._low_format(args if op.promote_from is None else [args[i] for i in op.promote_from]) is not None
        if not low or (fmt == FP32 and self.skip_fp32):
            self.hold_fp32(outputs, op.mutates)
            return out
        rounded = outputs[:1] if op.first_output_only else outputs
        for output in rounded:
            if output.dtype in EMULATED_DTYPES and roundable(output) and not (
                    op.mutates and output.untyped_storage().data_ptr() in self.params):
                self._round(output, fmt, kind, path)
        self.hold_fp32(outputs[len(rounded):], op.mutates)
        if creates_node:
            self._remember_low_node(_next_sequence_nr() - 1)
        return out

    handlers = {VIEW: _view, MOVE: _move, FP32_OPS: _fp32, MATMUL: _compute, PROMOTE: _compute}

    def _product(self, func, op: OpPlacement, args, kwargs, fmt: Format):
        """The op on its rounded inputs: ATen's kernel, an exact product, or flash attention rounding P."""
        if self.exact and op.placement == MATMUL:
            return exact_product(func, args, kwargs, self.policy, self._format)
        if fmt != FP32 and is_plain_attention(func, args, kwargs):
            return flash_attention_of(args, kwargs, fmt, self.policy)
        return func(*args, **kwargs)

    # --- rounding -----------------------------------------------------------
    def _round(self, tensor: torch.Tensor, fmt: Format, kind: str | None, path, source=None) -> None:
        """Round ``tensor`` (or ``source``, into ``tensor``) to ``fmt`` in place and tag it; observed by the
        recorder when there is one (unless ``kind`` is None: a weight cast to ``policy.params``, which is
        the training engine's to record)."""
        values = tensor if source is None else source
        before = values.detach().cpu().numpy().copy() if self.recorder is not None else None
        round_into(values, tensor, fmt)
        self._tags[tensor] = (fmt, _version(tensor))
        if before is None or kind is None:
            return
        array = tensor.detach().cpu().numpy()  # a view in CPU memory
        if kind == "activations":
            self.recorder.rounded(kind, path, before, array, fmt)
        else:  # weight or activation gradient: known when the parameters' hooks have run
            self.gradient_kinds.add(tensor, path, before, array.copy(), fmt)

    def _cast_param(self, tensor: torch.Tensor, address: int) -> torch.Tensor:
        """``tensor`` (a parameter or a view of one) with the parameter's values rounded to ``policy.params``."""
        parameter = self.params[address]
        cached = self._cast_params.get(address)
        if cached is None or cached[0] != _version(parameter):
            copy = torch.empty_like(parameter)  # the parameter's strides: its views map onto the copy
            self._round(copy, self.policy.params, None, None, source=parameter)
            cached = self._cast_params[address] = (_version(parameter), copy)
        copy = cached[1]
        view = copy.as_strided(tensor.size(), tensor.stride(),
                               tensor.storage_offset() - parameter.storage_offset() + copy.storage_offset())
        self._tags[view] = (self.policy.params, _version(view))  # a product on a tensor core reads its format
        return view

    def _round_input(self, tensor, fmt, kind, path):
        """An input of a low-precision op: ``tensor`` rounded (a copy), or itself when already in a format."""
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in EMULATED_DTYPES:
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
        if cached is not None and cached[0] == _version(tensor):
            return cached[1]
        copy = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        self._round(copy, fmt, kind, path, source=tensor if tensor.is_contiguous() else tensor.contiguous())
        self._copies[tensor] = (_version(tensor), copy)
        return copy

    # --- which tensors hold a format's values -------------------------------
    def _format(self, tensor: torch.Tensor) -> Format | None:
        """The low-precision format ``tensor`` is known to hold (tagged at its current version), or None."""
        tag = self._tags.get(tensor)
        return tag[0] if tag is not None and tag[1] == _version(tensor) else None

    def _tag_all(self, tensors, fmt: Format) -> None:
        for tensor in tensors:
            self._tags[tensor] = (fmt, _version(tensor))

    def _forget(self, tensors) -> None:
        """An op wrote into ``tensors``: what the mode held of them is void (an inference tensor's version
        never changes, so this is how the mode learns it)."""
        for tensor in tensors:
            self._tags.pop(tensor, None)
            self._copies.pop(tensor, None)

    def _low_format(self, args) -> Format | None:
        """Type promotion: the format of the op's floating tensor inputs (0-dim ones only when there are no
        others) when every one of them holds a low-precision format, else None."""
        dimensioned, scalars = [], []
        for tensor in tensor_args(args):
            if tensor.is_floating_point():
                (dimensioned if tensor.dim() else scalars).append(tensor)
        formats = [self._format(tensor) for tensor in dimensioned or scalars]
        return formats[0] if formats and None not in formats else None

    def _remember_low_node(self, sequence_nr: int) -> None:
        """The autograd node just created computes in low precision: in the backward pass its incoming
        gradients are rounded (autograd casts a gradient to its tensor's dtype) and so are its outputs."""
        self._low_nodes.add(sequence_nr)
        if len(self._low_nodes) > MAX_REMEMBERED:
            self._low_nodes = {nr for nr in self._low_nodes if nr > sequence_nr - MAX_REMEMBERED // 2}


def _version(tensor: torch.Tensor) -> int:
    """``tensor``'s version counter; an inference tensor (made under ``torch.inference_mode()``) has none, and
    reads -1: changed only by ops inside inference mode, which go through the mode (``_forget``)."""
    return -1 if tensor.is_inference() else tensor._version


def _map_tensors(arg, function, *extra):
    if isinstance(arg, (list, tuple)):
        return type(arg)(function(item, *extra) for item in arg)
    return function(arg, *extra)
