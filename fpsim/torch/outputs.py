"""What a model's forward returns, read one way by ``inspect`` and by the torch engine.

A model returns a tensor (its logits) or a container of tensors: a Hugging Face
``ModelOutput`` (an ``OrderedDict`` subclass whose fields are also attributes:
``.logits``, ``.loss``), a dict or a tuple / list.  Read without importing
``transformers`` (duck-typed):

* the logits: the tensor itself, else ``output.logits``, ``output["logits"]`` or ``output[0]``;
* the model's own loss: ``output.loss`` or ``output["loss"]`` when it is a tensor (an HF model computes it
  when it is given ``labels``), else None.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def logits_of(output):
    """The logits of ``output`` (see the module docstring), or None when none of the places holds a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = _field(output, "logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    return logits if isinstance(logits, torch.Tensor) else None


def own_loss(output):
    """The loss the model computed itself (``output.loss`` or ``output["loss"]``, a tensor), else None."""
    loss = None if isinstance(output, torch.Tensor) else _field(output, "loss")
    return loss if isinstance(loss, torch.Tensor) else None


def _field(output, name: str):
    """``output.name``, else ``output[name]`` of a mapping, else None."""
    value = getattr(output, name, None)
    if value is None and isinstance(output, Mapping):
        value = output.get(name)
    return value
