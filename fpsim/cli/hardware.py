"""Table of the GPU tensor-core models that accumulate="H100" (and the others) name, or one model in full.

Each row is one path (GPU, instruction, input path, output): products per fused
step (k), fraction bits kept below the largest exponent (f), the format and
rounding of each step, how c enters, and how many measured rows it reproduces.

Examples:
  fpsim hardware                                  every model
  fpsim hardware H100 --inputs e4m3               Hopper's FP8 wgmma path, with its source
  fpsim hardware b200:mma.sync --inputs e4m3 --output fp16
"""

from ..hardware import describe, rows
from ..report.table import text_table


def configure(parser):
    parser.add_argument("model", nargs="?", help="a GPU model to describe, e.g. H100, A100, B200:mma.sync "
                                                 "(default: the table of all)")
    parser.add_argument("--inputs", default="fp16", help="input path: fp16, bf16, tf32, fp8, e4m3, e5m2 "
                                                         "(default fp16)")
    parser.add_argument("--output", default="fp32", help="output format: fp32 or fp16 (default fp32)")


def run(args) -> int:
    if args.model is None:
        print(text_table(rows()))
    else:
        print(describe(args.model, args.inputs, args.output))
    return 0
