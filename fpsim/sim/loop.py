"""The training loop both engines run: steps, the recorder's step records, the divergence rule, a progress bar."""

from __future__ import annotations

import sys
from typing import Callable

from .result import has_diverged


def run_steps(steps: int, take_step: Callable[[int], tuple[float, bool]], weights_finite: Callable[[], bool],
              recorder, scaler, *, desc: str, progress: bool) -> tuple[int, int | None]:
    """Run ``take_step(step) -> (loss, skipped)`` for ``steps`` steps; return (steps run, diverged step or None).

    Each step is recorded between ``recorder.start_step`` and ``recorder.end_step``
    (with the loss scale it was taken at); the run stops at the first step after
    which ``has_diverged`` holds, so it never loops without end.
    """
    from tqdm import tqdm

    bar = tqdm(range(steps), desc=desc, disable=not progress, file=sys.stderr, leave=False)
    step, diverged_step = -1, None
    for step in bar:
        recorder.start_step(step)
        scale = scaler.scale if scaler is not None else 1.0
        loss, skipped = take_step(step)
        recorder.end_step(loss=loss, loss_scale=scale, skipped=skipped)
        if has_diverged(loss, weights_finite(), scaler, scale):
            diverged_step = step
            break
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", scale=f"{scale:g}", refresh=False)
    bar.close()
    recorder.finish()
    return step + 1, diverged_step
