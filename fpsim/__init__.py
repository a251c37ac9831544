"""fpsim: bit-exact emulation of floating-point formats and of mixed-precision training."""

from .exact import ROUNDING_MODES, round_exact
from .formats import BF16, E4M3, E5M2, FORMATS, FP16, FP32, FP64, TF32, Format, get_format
from .rounding import round

__version__ = "0.1.0"
