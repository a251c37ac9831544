"""The report: the analyses in ``analyses/`` run, their sections written, the verdicts summed up.

``runner``: ``fpsim report`` (loads each analysis once, runs them, writes ``REPORT.md``).
``section``: what an analysis script is given and returns (``Context``, ``Section``).
``output``: the report's folder, replaced whole and atomically, and its manifest.
``render``: REPORT.md and its summary of verdicts.  ``provenance``: version, commit, machine.
``claims``: the claims, the verdicts, and how a claim is judged on a model (score, band, paired difference).
``experiments``: the trainings the analyses share.  ``stats``: confidence
intervals and tests.  ``plots``, ``table``: figures and tables.  ``memory``,
``roofline``: models of memory and time.  ``sources``: cited figures.
``lost_updates``: the lost-update model.  Builds on ``fpsim.runs`` and below.
"""
