"""The report: the analyses in ``analyses/`` run, their sections written, the verdicts summed up.

``runner``: ``fpsim report`` (runs the analyses, writes ``REPORT.md``).
``experiments``: the trainings the analyses share.  ``stats``: confidence
intervals and tests.  ``plots``, ``table``: figures and tables.  ``memory``,
``roofline``: models of memory and time.  ``sources``: cited figures.
``lost_updates``: the lost-update model.  Builds on ``fpsim.runs`` and below.
"""
