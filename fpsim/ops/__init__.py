"""Operations on emulated formats: correctly rounded arithmetic, dot/sum/matmul, the calculator.

``arithmetic``: ``+ - * / sqrt fma``, each rounded once from the exact result.
``reductions`` (with ``_reduction_kernels``): ``dot``, ``sum`` and ``matmul``
with an input, accumulation and output format and a stated order.  ``calc``:
an expression evaluated step by step in a format.  ``quantize`` (with
``_quantize_kernels``): scaled quantization per tensor, row or block (FP8, MX,
NVFP4; 1-D blocks or 2-D tiles).  ``hadamard``: the (random) Hadamard transform of NVFP4
training, rounded once to FP32.  Builds on ``fpsim.numerics``.
"""
