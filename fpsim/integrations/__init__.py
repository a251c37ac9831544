"""fpsim inside other training loops: Lightning and the transformers ``Trainer`` (optional extras).

``fpsim.integrations.lightning.EmulatedPrecision(policy)`` is a Lightning
precision plugin (``Trainer(plugins=[...])``, ``Fabric(plugins=...)``);
``fpsim.integrations.transformers.EmulatedTrainer(policy=..., ...)`` is the
transformers ``Trainer`` with its steps under a policy.  Both are thin: they
enter ``fpsim.torch.emulate`` around each step's forward and backward passes and
apply the policy's loss scaling and weight storage around the loop's own
optimizer (``fpsim.integrations.steps.EmulatedSteps``).  Importing this package
imports neither torch nor the frameworks; each module needs its extra
(``pip install "fpsim[lightning]"`` / ``"fpsim[hf]"``) and says so in one line.
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str, feature: str):
    """``module`` imported, or ImportError in one line: the package ``feature`` needs and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f'{feature} needs {module.partition(".")[0]}: pip install "fpsim[{extra}]"') from None
