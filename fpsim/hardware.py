"""``fpsim.hardware``: the GPU tensor-core models that ``accumulate="H100"`` (and the others) name.

``rows()`` lists every modelled path as a table row; ``describe(name, inputs,
output)`` states one model (products per fused step, fraction bits kept,
rounding, handling of c, source, measured rows); ``accumulator_model`` returns
the record itself, for callers that compute with it.  The models and the exact
algorithm are in ``fpsim.ops.tensor_cores``; B200's block-scaled paths (``inputs="mxfp8"``, ``"mxfp4"``,
``"nvfp4"``) in ``fpsim.ops.block_scaled``.
"""

from __future__ import annotations

from .numerics.formats import get_format
from .ops.block_scaled import BLOCK_SCALED_INPUTS, BLOCK_SCALED_MODELS, BlockScaledModel, block_scaled_model
from .ops.tensor_cores import GPUS, MODELS, AccumulatorModel, accumulator_model, parse_gpu

BLOCK_SCALED_NAMES = (*BLOCK_SCALED_INPUTS, "mxfp8_e4m3")
"""The ``inputs`` names of B200's block-scaled paths."""

__all__ = ["GPUS", "MODELS", "BLOCK_SCALED_MODELS", "AccumulatorModel", "BlockScaledModel", "accumulator_model",
           "describe", "rows"]


def rows() -> list[dict]:
    """One row per model (``MODELS``, then the block-scaled ``BLOCK_SCALED_MODELS``): GPU, instruction, inputs,
    output, k, f, step format, rounding, c handling, measured."""
    return [{"gpu": m.gpu, "instruction": m.instruction, "inputs": m.inputs, "output": m.output.name,
             "k": m.products_per_step, "f": m.fraction_bits, "step": m.step_format.name, "rounding": m.rounding,
             "c": "aligned" if m.c_in_alignment else "added after", "measured": _short(m.measured)}
            for m in MODELS] + \
        [{"gpu": m.gpu, "instruction": m.instruction, "inputs": m.inputs, "output": m.output.name,
          "k": m.products_per_step, "f": m.fraction_bits, "step": m.output.name, "rounding": "toward_zero",
          "c": "aligned" if m.c_in_alignment else "added after", "measured": _short(m.measured)}
         for m in BLOCK_SCALED_MODELS]


def describe(name: str, inputs="fp16", output="fp32") -> str:
    """The model of GPU ``name`` ("H100", "B200:mma.sync", ...) for ``inputs`` and ``output``, in a few lines;
    B200 with a block-scaled preset (``inputs="mxfp8"``, ``"mxfp4"``, ``"nvfp4"``...) states its block-scaled
    MMA."""
    if isinstance(inputs, str) and inputs.lower() in BLOCK_SCALED_NAMES:
        model = block_scaled_model(inputs.lower())
        if parse_gpu(name) is None or parse_gpu(name)[0] != model.gpu or get_format(output) != model.output:
            raise ValueError(f"inputs {inputs!r} (block-scaled) run on {model.gpu} with {model.output.name} output "
                             f"only: fpsim hardware {model.gpu} --inputs {inputs}")
        return model.describe()
    return accumulator_model(name, inputs, output).describe()


def _short(measured: str) -> str:
    """The match counts of a record's measured rows ("400/400, 400/400"), "unsolved ..." or "not measured"."""
    if measured.startswith("unsolved"):
        return "unsolved " + "/".join(part.split("/")[0].split()[-1] for part in measured.split(",")[:2]) + " of 400"
    counts = [word for word in measured.replace(",", " ").split() if "/" in word and word[0].isdigit()]
    return ", ".join(counts) if counts else "not measured"
