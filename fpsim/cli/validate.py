"""Check fpsim's rounding bit for bit against the hardware dtypes and the exact reference.

Compares fpsim.round with numpy float16 and ml_dtypes bfloat16 / float8 casts on
about 10 million float32 inputs (ties, values next to ties, limits, random bit
patterns), with numpy's float64 -> float16 cast, and with the exact Fraction
reference in every deterministic mode for built-in and other formats.
Expected: 0 mismatches everywhere.  Exit status 1 if any mismatch is found.

Examples:
  fpsim validate
  fpsim validate --exhaustive        all 2^32 float32 inputs to FP16 and BF16 (minutes)
"""

import time

from ..report.table import text_table
from ..numerics.validation import exhaustive_float32, run_validation


MAX_INPUTS = 10**9
"""Most random inputs: about 30 GB of arrays."""


def configure(parser):
    parser.add_argument("--inputs", type=int, default=10_000_000, help="float32 inputs (default 10 million)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--exhaustive", action="store_true",
                        help="also round every float32 bit pattern to FP16 and BF16 against the hardware casts")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args) -> int:
    if not 1000 <= args.inputs <= MAX_INPUTS:
        raise ValueError(f"--inputs must be at least 1000 and at most {MAX_INPUTS} (each takes about 30 bytes)")
    start = time.perf_counter()
    rows = run_validation(args.inputs, args.seed, progress=args.progress)
    print(text_table(rows))
    if args.exhaustive:
        exhaustive = [exhaustive_float32(fmt, progress=args.progress) for fmt in ("fp16", "bf16")]
        print("\nAll 2^32 float32 inputs:")
        print(text_table(exhaustive))
        rows += exhaustive
    total = sum(row["mismatches"] for row in rows)
    print(f"\n{total} mismatches in {len(rows)} checks, {time.perf_counter() - start:.1f} s")
    return 1 if total else 0
