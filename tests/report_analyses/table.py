"""Fixture analysis (tests/test_report.py): a table, and a verdict on the conv net."""

from fpsim.report.section import new_section

ORDER = 2


def run(ctx):
    section = new_section(ctx, globals(), "A table of numbers")
    section.what_was_run("nothing")
    section.table([{"x": 1, "y": 0.5}], caption="One row.")
    section.text("the number is 43")
    section.verdict("(x) the claim", "not supported by the evidence", "it failed on the conv net", model="conv net")
    return section
