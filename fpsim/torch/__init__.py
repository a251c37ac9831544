"""fpsim's torch engine: any ``torch.nn.Module`` under an emulated precision policy.

``emulate(policy, model=, recorder=, accumulate=)`` runs the forward and
backward passes inside it under the policy; ``inspect(model, inputs)`` measures,
in one FP32 pass, where each module's tensors sit in each format's range.
Importing this package needs PyTorch (``pip install "fpsim[torch]"``);
``import fpsim`` never imports it.
"""

from ._require import require_torch

require_torch()

from .emulate import emulate  # noqa: E402
from .inspect import inspect  # noqa: E402
