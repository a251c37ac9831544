"""Table of the built-in floating-point formats and their limits.

Example:
  fpsim formats
"""

from ..numerics.formats import FORMATS
from ..report.table import text_table


def format_rows() -> list[dict]:
    """One row per built-in format: layout, range and precision."""
    return [{"format": f.name, "bits": f.bits, "exp": f.exponent_bits, "mant": f.mantissa_bits, "bias": f.bias,
             "specials": f.specials, "max": f.max, "smallest_normal": f.smallest_normal,
             "smallest_subnormal": f.smallest_subnormal, "eps": f.eps,
             "decimal_digits": round(f.decimal_digits, 2), "range_binades": round(f.dynamic_range_binades, 1)}
            for f in FORMATS.values()]


def configure(parser):
    pass


def run(args) -> int:
    print(text_table(format_rows()))
    return 0
