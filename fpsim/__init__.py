"""fpsim: bit-exact emulation of floating-point formats and of mixed-precision training."""

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
from .sim.policy import POLICIES, SCALED_POLICIES, Policy
from .sim.result import TrainResult
from .engines import train
from .runs.sweep import load_sweep, sweep

__version__ = "0.1.0"
