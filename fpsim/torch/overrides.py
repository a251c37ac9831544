"""Per-module policies in ``emulate``: each op runs under the policy of the module it belongs to.

A policy with ``overrides`` (``fpsim.sim.policy``) gives some modules another policy.  ``RoutingMode``
holds one regime's mode per distinct policy (``AutocastMode`` or ``ScaledMode``, built by ``emulate``) and
hands each op, forward and backward, to the mode of its module: the path ``fpsim.torch.tracking`` names
(the innermost module call in the forward pass, the module whose forward created the running autograd
node in the backward pass), its policy from ``Policy.resolve_overrides`` over the model's modules that
hold parameters; ops outside the model run under the run's policy.  So an FP8-scaled run whose last
layers are BF16 runs those layers' ops under autocast's rules, forward and backward, and the rest under
the FP8 recipe.  The sub-modes share the router's module paths, parameters and buffers; each keeps its
own state (a forward's rounded copies are found again by its backward, which runs in the same module).
"""

from __future__ import annotations

import torch

from .mode import EmulationMode
from .placement import PLACEMENTS
from .tracking import OUTSIDE, ROOT

_current_node = torch._C._current_autograd_node


def model_layers(model) -> list:
    """The paths of ``model``'s modules that hold parameters of their own, in ``named_modules`` order."""
    return [name or ROOT for name, module in model.named_modules()
            if next(module.parameters(recurse=False), None) is not None]


class RoutingMode(EmulationMode):
    """The mode of ``emulate`` under a policy with overrides (see the module docstring).  ``make(policy)``
    builds the regime's mode of one policy (with ``model=None``: the router attaches the model)."""

    def __init__(self, policy, model, recorder, make):
        super().__init__(policy, model)
        if model is None:
            raise ValueError(f"policy {policy.name} has per-module overrides: pass the model (emulate(..., "
                             f"model=model)) whose module paths they name")
        self.assignment = policy.resolve_overrides(model_layers(model))
        self.modes = {p: make(p) for p in self.assignment.policies}
        self.recorder = recorder
        self._routed = {}  # path -> the mode its ops run in

    def attach(self) -> list:
        handles = super().attach()
        for mode in self.modes.values():
            mode.paths, mode.params, mode.param_paths, mode.buffers = (self.paths, self.params, self.param_paths,
                                                                        self.buffers)
            handles += mode.attach()
        return handles

    def release(self) -> None:
        for mode in self.modes.values():
            mode.release()

    def _route(self, func, op, args, kwargs):
        """The op handed to the mode of its module's policy."""
        path = self.paths.current(_current_node())
        mode = self._routed.get(path)
        if mode is None:
            policy = self.policy if path == OUTSIDE else self.assignment.policy_of(path)
            mode = self._routed[path] = self.modes[policy]
            if self.recorder is not None and hasattr(self.recorder, "ran_under"):
                self.recorder.ran_under(path, policy.name)
        return mode.handlers[op.placement](mode, func, op, args, kwargs)

    handlers = dict.fromkeys(PLACEMENTS, _route)
