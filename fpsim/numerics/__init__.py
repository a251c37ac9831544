"""The numerics core: formats, the exact reference, the rounding kernels, bit patterns, validation.

Everything else in fpsim rounds through here.  ``formats`` derives every
property of a format from (exponent bits, mantissa bits, specials); ``exact``
rounds with Python integers and ``Fraction`` (the readable reference);
``kernels`` are the numba kernels that ``rounding`` drives; ``bits`` reads and
writes bit patterns; ``validation`` holds the kernels against numpy, ml_dtypes
and the exact reference.  ``checks`` are the number checks every layer calls,
``threads`` the one place thread counts are set and restored.  Imports nothing
from the rest of fpsim.
"""
