"""Run the analyses and write the report: where gradients underflow, why loss scaling and
master weights work, BF16's range, FP8 and MX scaling, and a verdict on every claim.

Runs each script in analyses/ (formats, rounding_validation, gradient_underflow,
loss_scaling, master_weights, bf16_range, claims and claims_cost on the MLP; transformer_underflow,
transformer_overflow, claims_models, fp8, hardware (GPU tensor cores' accumulation) and recipes
(the NVFP4 recipe's components, DeepSeek's blockwise FP8) on the transformer and the conv net, which
need torch; pretrained on all-MiniLM-L6-v2, which needs the pretrained extra: without what they
need they are skipped and the report says so) and writes
DIR/REPORT.md with its figures (PNG) and data (JSON, CSV), summary page first.
The report is written into a temporary folder and moved into place at the end,
so an interrupted run (Ctrl-C, SIGTERM) leaves the previous report intact.  DIR
must be new, empty or a previous report (its report.json lists its files): a
file, a folder holding anything else, or the current folder is refused.  An analysis that fails
is reported with its error, the others still run, and the exit status is 1.

Examples:
  fpsim report                          the full report into reports/ (about two hours on 2 cores)
  fpsim report --quick --out /tmp/r     a small-budget run (a few minutes)
  fpsim report --only formats claims    these analyses; the others' sections are kept from DIR
"""

from ..report import runner as report


def configure(parser):
    parser.add_argument("--quick", action="store_true", help="small budget: fewer seeds, steps and grid points")
    parser.add_argument("--out", default="reports", help="output folder (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these analyses")
    parser.add_argument("--store", default=None,
                        help="SQLite sweep store to reuse, so an interrupted run resumes its training runs "
                             "(default: a fresh one, removed at the end)")
    parser.add_argument("--analyses", default=None, metavar="DIR",
                        help="folder of analysis scripts to run (default: analyses/ of the clone fpsim runs from)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")


def run(args) -> int:
    result = report.run_report(args.out, quick=args.quick, only=args.only, progress=args.progress,
                               store=args.store, analyses_dir=args.analyses)
    print(f"wrote {result.out / 'REPORT.md'} in {result.seconds / 60:.1f} min")
    for outcome in result.failed:
        print(f"failed: {outcome.name}: {outcome.error}")
    return 1 if result.failed else 0
