"""The training loop both engines run: steps (``fpsim.sim.step``), the recorder's step records, the divergence rule,
a progress bar."""

from __future__ import annotations

import sys

from .result import has_diverged
from .step import TrainingStep


def run_steps(steps: int, take_step: TrainingStep, recorder, *, desc: str, progress: bool) -> tuple[int, int | None]:
    """Run ``take_step(step) -> (loss, skipped)`` for ``steps`` steps; return (steps run, diverged step or None).

    Each step is recorded between ``recorder.start_step`` and ``recorder.end_step``
    (with the loss scale it was taken at); the run stops at the first step after
    which ``has_diverged`` holds, so it never loops without end.  A KeyboardInterrupt
    (Ctrl-C) stops it too: the steps recorded until then are returned, fewer than
    ``steps`` with no divergence, which ``result_of_run`` reports as "interrupted".
    """
    from tqdm import tqdm

    scaler = take_step.scaler
    steps_run, diverged_step, bar = 0, None, None
    try:
        bar = tqdm(range(steps), desc=desc, disable=not progress, file=sys.stderr, leave=False)
        for step in bar:
            recorder.start_step(step)
            scale = scaler.scale if scaler is not None else 1.0
            loss, skipped = take_step(step)
            recorder.end_step(loss=loss, loss_scale=scale, skipped=skipped)
            steps_run = step + 1
            if has_diverged(loss, take_step.weights.finite(), scaler, scale):
                diverged_step = step
                break
            if progress and step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.4f}", scale=f"{scale:g}", refresh=False)
    except KeyboardInterrupt:
        pass  # the step in progress is dropped (its counts were not recorded); the engine reports the rest
    finally:
        if bar is not None:
            bar.close()
    recorder.finish()
    return steps_run, diverged_step
