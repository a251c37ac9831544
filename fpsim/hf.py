"""``fpsim.hf.EmulatedTrainer``: the transformers ``Trainer`` under a policy (``fpsim.integrations.transformers``)."""

from .integrations.transformers import EmulatedTrainer

__all__ = ["EmulatedTrainer"]
