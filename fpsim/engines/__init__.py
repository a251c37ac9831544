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

    Your own model and data (torch engine): ``model=`` a ``torch.nn.Module`` (trained as a copy) or a factory
    (told, as the keyword arguments it names, what the data decide: ``vocab_size``, ``block_size``,
    ``classes``, ``inputs``); ``data=`` ``(x, y)`` arrays or tensors, a ``torch.utils.data.Dataset`` or
    ``DataLoader``, or an iterable of batches (dicts of tensors, as Hugging Face collators give, are passed
    as ``model(**batch)``); ``loss_fn(output, targets)``, else the model's own ``output.loss``, else the
    cross-entropy of its logits; ``validation=`` held-out data for the test metrics (None without it).
    ``fpsim.torch.user_data`` states each rule.

    The same options and seed give a bit-identical result.  Ctrl-C raises
    ``TrainingInterrupted``, a KeyboardInterrupt that holds the partial result.
    """
    return run(TrainConfig.from_dict({"policy": policy, **options}), progress=progress)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training run; ``result`` is what it did until then, its status "interrupted".

    A KeyboardInterrupt, so that whatever stops on Ctrl-C (a sweep, a script) still stops; the result goes
    along only within the process (pickled, e.g. from a pool's worker, it is a plain KeyboardInterrupt)."""

    def __init__(self, result: TrainResult):
        super().__init__(f"interrupted at step {result.steps_run}")
        self.result = result

    def __reduce__(self):
        return KeyboardInterrupt, self.args


def run(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train ``config`` on its model's engine (``TrainingInterrupted`` on Ctrl-C, see ``train``)."""
    if config.engine == "numpy":
        from .numpy_engine import train_mlp
        result = train_mlp(config, progress=progress)
    elif importlib.util.find_spec("torch") is None:
        raise ValueError(f"model {config.to_dict()['model']!r} runs on the torch engine, which needs PyTorch: "
                         'pip install "fpsim[torch]"')
    else:
        from ..torch.engine import train as train_torch
        result = train_torch(config, progress=progress)
    if result.status == "interrupted":
        raise TrainingInterrupted(result)
    return result
