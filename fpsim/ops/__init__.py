"""Operations on emulated formats: correctly rounded arithmetic, dot/sum/matmul, the calculator.

``arithmetic``: ``+ - * / sqrt fma``, each rounded once from the exact result.
``reductions`` (with ``_reduction_kernels``): ``dot``, ``sum`` and ``matmul``
with an input, accumulation and output format and a stated order.  ``calc``:
an expression evaluated step by step in a format.  Builds on ``fpsim.numerics``.
"""
