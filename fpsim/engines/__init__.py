"""Training engines: a model trained under a ``Policy``, observed by a ``Recorder``, one ``TrainResult``.

``fpsim.train`` builds one ``TrainConfig`` and hands it to the engine of its
model: ``numpy_engine`` (the bit-exact engine: the MLP of ``mlp``, every product
and its accumulation emulated; no torch needed) or ``fpsim.torch.engine`` (any
``torch.nn.Module``; needs the ``fpsim[torch]`` extra).  Builds on ``fpsim.sim``.
"""

from __future__ import annotations

import importlib.util

from ..sim.config import TrainConfig
from ..sim.result import TrainResult


def train(policy, *, progress: bool = True, **options) -> TrainResult:
    """Train a model under a precision policy and record what its formats did to it.

    ``policy``: a ``Policy``, a preset name (``fpsim.POLICIES``) or a dict of Policy
    fields.  ``options``: the other fields of ``fpsim.TrainConfig`` (each documented
    there), e.g. ``model="char-gpt"``, ``data="digits"``, ``hidden=(128, 128, 128)``,
    ``optimizer="adam"``, ``lr``, ``steps``, ``batch_size``, ``seed``, ``grad_scale``,
    ``loss_scale``, ``histograms``.  ``progress``: a progress bar on stderr.

    The same options and seed give a bit-identical result.
    """
    return run(TrainConfig.from_dict({"policy": policy, **options}), progress=progress)


def run(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train ``config`` on its model's engine."""
    if config.engine == "numpy":
        from .numpy_engine import train_mlp
        return train_mlp(config, progress=progress)
    if importlib.util.find_spec("torch") is None:
        raise ValueError(f"model {config.to_dict()['model']!r} runs on the torch engine, which needs PyTorch: "
                         'pip install "fpsim[torch]"')
    from ..torch.engine import train as train_torch
    return train_torch(config, progress=progress)
