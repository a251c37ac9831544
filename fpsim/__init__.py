"""fpsim: bit-exact emulation of floating-point formats and of mixed-precision training.

Formats and rounding (``Format``, ``get_format``, ``round``, ``round_exact``, bit
patterns), correctly rounded arithmetic and reductions (``add`` ... ``matmul``),
scaled quantization (``quantize``); training (``train`` under a ``Policy``, one of
``POLICIES`` or your own, configured by a ``TrainConfig``, observed by a
``Recorder``, ending in a ``TrainResult``); sweeps (``sweep``, ``load_sweep``).
The torch engine is ``fpsim.torch`` (needs PyTorch); importing ``fpsim`` never
imports torch.
"""

from .numerics.bits import decode, describe, encode, fields
from .numerics.exact import ROUNDING_MODES, round_exact
from .numerics.formats import (BF16, E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, FORMATS, FP16, FP32, FP64, TF32, Format,
                               get_format)
from .numerics.rounding import round
from .ops.arithmetic import add, div, fma, mul, sqrt, sub
from .ops.hadamard import hadamard
from .ops.quantize import quantize
from .ops.reductions import dot, matmul, sum
from . import hardware
from .sim.config import TrainConfig
from .sim.data import load_data
from .sim.loss_scaling import LossScaler
from .sim.policy import POLICIES, SCALED_POLICIES, Policy
from .sim.recorder import Recorder
from .sim.result import TrainResult
from .sim.scaling import Scaling
from .sim.vocabulary import Kind
from .engines import TrainingInterrupted, train
from .runs.sweep import load_sweep, sweep

__version__ = "0.1.0"

__all__ = [
    # formats, rounding, bit patterns
    "Format", "get_format", "FORMATS", "FP64", "FP32", "TF32", "FP16", "BF16", "E4M3", "E5M2", "E3M2", "E2M3", "E2M1",
    "E8M0", "round", "round_exact", "ROUNDING_MODES", "decode", "encode", "fields", "describe",
    # arithmetic, reductions, quantization
    "add", "sub", "mul", "div", "fma", "sqrt", "dot", "sum", "matmul", "quantize", "hadamard", "hardware",
    # training
    "Policy", "POLICIES", "SCALED_POLICIES", "Scaling", "LossScaler", "Kind", "TrainConfig", "load_data", "Recorder",
    "TrainResult", "train", "TrainingInterrupted",
    # sweeps
    "sweep", "load_sweep",
]
