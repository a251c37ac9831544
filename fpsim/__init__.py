"""fpsim: bit-exact emulation of floating-point formats and of mixed-precision training."""

from .arithmetic import add, div, fma, mul, sqrt, sub
from .bits import decode, describe, encode, fields
from .exact import ROUNDING_MODES, round_exact
from .formats import BF16, E4M3, E5M2, FORMATS, FP16, FP32, FP64, TF32, Format, get_format
from .policy import POLICIES, Policy
from .reductions import dot, matmul, sum
from .rounding import round
from .sweep import load_sweep, sweep
from .training import TrainResult, train

__version__ = "0.1.0"
