"""Fixture analysis (tests/test_report.py): does a claim hold on the three models? It writes a key figure,
a JSON and a CSV file, and verdicts per model and on no model."""

import matplotlib.pyplot as plt

from fpsim.report.runner import analysis_main
from fpsim.report.section import new_section

ORDER = 1


def run(ctx):
    section = new_section(ctx, globals(), "Verdicts on a claim")
    section.what_was_run(f"nothing ({'quick' if ctx.quick else 'full'} mode)")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    section.figure(fig, "line.png", "A straight line.", key=True)
    section.data("numbers.json", {"answer": 42})
    section.data("numbers.csv", [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    section.text("the number is 42")
    section.verdict("(x) the claim", "holds", "it held on the MLP", model="MLP")
    section.verdict("(x) the claim", "holds under conditions", "it held with care", model="transformer",
                    condition="with care")
    section.verdict("(y) a claim judged once", "not supported by the evidence", "no | evidence")
    return section


if __name__ == "__main__":
    raise SystemExit(analysis_main(globals()))
