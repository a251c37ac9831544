"""The names every layer shares: the tensor kinds, the built-in models and the optimizers.

A name here means one thing in every layer: ``TrainConfig`` validates against
it, the engines build from it, ``fpsim inspect`` offers it, the report's claims
score and compare by it.  Nothing here imports torch: a torch model's builder
is named by its dotted path and imported only when a run builds it.

A tensor **kind** (``Kind``) is one of a training step's tensors.  Its format
is the ``Policy`` field ``Kind.format_field`` names; the operands of a matrix
product (``OPERAND_KINDS``: params, activations, gradients) are named as those
fields, and are what a scaling recipe casts; the recorder counts the roundings
of ``RECORDED_KINDS`` (activations, activation_grads, weight_grads, updates).

A built-in model's **score** is the number the report judges it by, read from a
run's result (``TrainResult.to_dict()``): the MLP's and the conv net's test
accuracy (higher is better), the transformer's validation loss in bits per
character (nats / ln 2, lower is better).  Its **tolerance** is what "as well as"
means for it: the MLP and the conv net within one point of accuracy (an absolute
band of 0.01), the transformer within 1% of the reference's bits per character
(a relative band of 0.01).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    """A kind of tensor in a training step; its value is its name in JSON, the recorder and ``Policy.scaling``.

    A str (``Kind.ACTIVATIONS == "activations"``), so that a name given as a string keys the same entry."""

    PARAMS = "params"
    """The weights as the products use them (cast from the master weights); format ``Policy.params``."""
    ACTIVATIONS = "activations"
    """A layer's output, the next product's activation operand; format ``Policy.activations``."""
    GRADIENTS = "gradients"
    """The gradient operand of a backward product (the gradient w.r.t. a layer's output, as a scaling recipe
    casts it); format ``Policy.gradients``; counted by the recorder as ``ACTIVATION_GRADS``."""
    ACTIVATION_GRADS = "activation_grads"
    """The gradient of the loss w.r.t. a layer's output, as rounded; format ``Policy.gradients``."""
    WEIGHT_GRADS = "weight_grads"
    """The gradient w.r.t. a layer's weights and bias; format ``Policy.gradients``."""
    UPDATES = "updates"
    """The stored weights after an update; format ``Policy.weights`` (the master weights, else ``params``)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def format_field(self) -> str:
        """The ``Policy`` attribute holding this kind's format."""
        return {"activation_grads": "gradients", "weight_grads": "gradients", "updates": "weights"}.get(
            self.value, self.value)

    def format_of(self, policy):
        """This kind's format under ``policy``."""
        return getattr(policy, self.format_field)

    @property
    def recorded_as(self) -> "Kind | None":
        """The kind the recorder counts this one's roundings under (None for ``PARAMS``: the weights' casts are
        counted in the scale traces only, ``Recorder.scaled``)."""
        return {Kind.PARAMS: None, Kind.GRADIENTS: Kind.ACTIVATION_GRADS}.get(self, self)


OPERAND_KINDS = (Kind.PARAMS, Kind.ACTIVATIONS, Kind.GRADIENTS)
"""The operands of a matrix product, in this order: what a scaling recipe (``Policy.scaling``) may cover."""

RECORDED_KINDS = (Kind.ACTIVATIONS, Kind.ACTIVATION_GRADS, Kind.WEIGHT_GRADS, Kind.UPDATES)
"""The kinds whose roundings the recorder counts (``fpsim.sim.recorder``), in this order."""

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
"""Every optimizer name a run may take: plain SGD, SGD with (heavy-ball) momentum, Adam, AdamW."""


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: what trains it, on what, and how the report scores it."""

    name: str
    """The name ``TrainConfig(model=...)``, ``fpsim train --model`` and ``fpsim inspect --model`` take."""
    label: str
    """What the report calls it ("MLP", "conv net", "transformer")."""
    engine: str
    """``"numpy"`` (bit-exact, no torch needed) or ``"torch"`` (``fpsim.torch``)."""
    data: str
    """The data set it trains on unless told otherwise (``fpsim.sim.data.DATA_SETS``)."""
    builder: str | None
    """``"module:function"`` building the torch model, None for the numpy engine's MLP."""
    optimizers: tuple[str, ...]
    """The optimizers its engine takes (a subset of ``OPTIMIZERS``)."""
    score_name: str
    """What ``score`` returns: ``"test accuracy"`` or ``"bits per character"``."""
    unit: str
    """The unit a difference of scores is written in: ``"points"`` (of accuracy) or ``"bits per character"``."""
    unit_scale: float
    """Multiply a difference of scores by this to write it in ``unit`` (100 for points of accuracy)."""
    higher_is_better: bool
    """Whether a larger score is the better one."""
    tolerance: float
    """The "as well as" band: ``tolerance`` of score (absolute) or ``tolerance`` times the reference's mean score
    (``relative``)."""
    relative: bool

    def score(self, result: dict) -> float | None:
        """The run's score; None when the run diverged or left no finite loss (it has no score to compare)."""
        if result["status"] == "diverged" or result["test_loss"] is None:
            return None
        if self.score_name == "bits per character":
            return result["test_loss"] / math.log(2)
        return None if result["test_accuracy"] is None else float(result["test_accuracy"])

    def gain(self, difference: float) -> float:
        """A difference of scores (a - b) as how much better a is than b (positive: a is better)."""
        return difference if self.higher_is_better else -difference

    def band(self, reference_scores) -> float:
        """The "as well as" band around a reference whose runs scored ``reference_scores``."""
        if not self.relative:
            return self.tolerance
        scores = [float(s) for s in reference_scores]
        return self.tolerance * sum(scores) / len(scores)

    def build(self):
        """The function building the torch model (imports torch); refused for the numpy engine's MLP."""
        if self.builder is None:
            raise ValueError(f"{self.name} is the numpy engine's model: it has no torch builder")
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


MODELS: dict[str, BuiltinModel] = {
    "mlp": BuiltinModel("mlp", "MLP", "numpy", "digits", None, ("sgd", "momentum", "adam"),
                        "test accuracy", "points", 100.0, True, 0.01, False),
    "cnn": BuiltinModel("cnn", "conv net", "torch", "mnist1d", "fpsim.torch.models:build_cnn", OPTIMIZERS,
                        "test accuracy", "points", 100.0, True, 0.01, False),
    "char-gpt": BuiltinModel("char-gpt", "transformer", "torch", "pydoc", "fpsim.torch.models:build_gpt", OPTIMIZERS,
                             "bits per character", "bits per character", 1.0, False, 0.01, True),
}
"""The built-in models by name."""

BY_LABEL: dict[str, BuiltinModel] = {model.label: model for model in MODELS.values()}
"""The built-in models by the report's label ("MLP", "conv net", "transformer")."""


def model_named(name) -> BuiltinModel:
    """The built-in model called ``name`` (case and surrounding spaces ignored), or one line naming them all."""
    if isinstance(name, str) and name.strip().lower() in MODELS:
        return MODELS[name.strip().lower()]
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)} or a function returning a "
                     "torch.nn.Module")
