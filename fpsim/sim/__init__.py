"""The simulation core shared by the training engines.

``policy``: which format each tensor lives in (``Policy``, the presets).
``scaling``: the FP8 / MX scaling recipes (``Scaling``, Transformer Engine's
delayed rule).
``step``: the training step, the recipe written once (``loop`` runs it).
``recorder``: the statistics of every rounding.  ``loss_scaling``: the loss
scaler (GradScaler's semantics).  ``optimizers``: SGD, momentum, Adam and the
update rules (nearest, stochastic, Kahan).  ``data``: the offline data sets.
Engines call these; these never call an engine.  Builds on ``fpsim.ops``.
"""
