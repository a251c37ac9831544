"""The analysis API: what an analysis script is given (``Context``) and what it returns (``Section``).

An analysis is a script ``analyses/NAME.py`` with an ``ORDER`` number (its place
in the report), a docstring (the question it answers), ``run(ctx) -> Section`` and,
when it needs an optional engine, ``NEEDS`` (module names, e.g. ``("torch",)``).
It configures runs, calls the library, and records what it found in a
:class:`Section`: what was run, text and tables, figures (PNG) and data (JSON,
CSV), and for the claims, verdicts (``fpsim.report.claims``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .claims import MODELS, VERDICTS
from .table import markdown_table


class LazyPool:
    """A ``fpsim.runs.sweep.local_pool`` started on first use and shut down by ``close``."""

    def __init__(self):
        self._executor = None

    def get(self):
        if self._executor is None:
            from ..runs.sweep import local_pool

            self._executor = local_pool()
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


@dataclass
class Context:
    """What an analysis is given: where to write, how big to run, and the shared store of training runs."""

    out: Path
    """Folder for this analysis's figures and data (created)."""
    quick: bool = False
    """Small budget: fewer seeds, steps and grid points (for tests and a first look)."""
    progress: bool = True
    """Show progress bars on stderr."""
    store: Path | None = None
    """SQLite store shared by the analyses' sweeps (``fpsim.sweep``); ``None``: ``out/runs.sqlite``."""
    pool: LazyPool = field(default_factory=LazyPool, repr=False)
    """The process pool for training sweeps, shared by the analyses of one report."""

    def __post_init__(self):
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.store is None:
            self.store = self.out / "runs.sqlite"

    def pick(self, quick, full):
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full

    def executor(self):
        """The shared process pool (``fpsim.runs.sweep.local_pool``: one worker per core), started on first use."""
        return self.pool.get()

    def close(self) -> None:
        self.pool.close()


@dataclass
class Figure:
    """A figure written by an analysis: its file (relative to the analysis folder) and caption."""

    path: str
    caption: str
    key: bool = False
    """Shown on the summary page."""


@dataclass
class Verdict:
    """A verdict on one claim, with its evidence (markdown) and sources.

    ``model``: the model the verdict is about (one of ``claims.MODELS``), or "" for a claim judged
    once (time, memory).  ``condition``: for "holds under conditions", the conditions in a
    few words (the overall verdict lists them).
    """

    claim: str
    verdict: str
    evidence: str
    sources: str = ""
    model: str = ""
    condition: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if self.model and self.model not in MODELS:
            raise ValueError(f"a verdict's model must be one of {', '.join(MODELS)}, got {self.model!r}")


@dataclass
class Section:
    """What one analysis found, written as it goes into its folder.

    The markdown parts are kept in order (``parts``); figures and data files are
    written at once into ``out`` and listed.  ``save`` writes ``section.json``
    (read back by the report) and ``section.md`` (the section on its own).
    """

    name: str
    title: str
    out: Path
    question: str = ""
    parts: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def what_was_run(self, text: str) -> None:
        """A paragraph stating what was run: data, model, policies, seeds, steps."""
        self.parts.append(f"**What was run.** {text.strip()}")

    def text(self, markdown: str) -> None:
        self.parts.append(markdown.strip())

    def table(self, rows: list[dict], columns: list[str] | None = None, caption: str = "") -> None:
        """A markdown table of ``rows`` (dicts), the columns in ``columns`` order (default: the first row's keys)."""
        self.parts.append(markdown_table(rows, columns, caption))

    def figure(self, fig, filename: str, caption: str, key: bool = False, dpi: int = 120) -> None:
        """Save the matplotlib figure ``fig`` as ``filename`` (PNG), close it, and embed it here."""
        import matplotlib.pyplot as plt

        fig.savefig(self.out / filename, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(Figure(filename, caption, key))
        self.parts.append(f"![{caption}]({{dir}}/{filename})\n\n*{caption}*")

    def data(self, filename: str, content) -> None:
        """Write ``content`` as ``filename``: JSON for ``.json``; for ``.csv`` a list of dicts."""
        path = self.out / filename
        if filename.endswith(".json"):
            path.write_text(json.dumps(content, indent=1, default=_json_default) + "\n")
        elif filename.endswith(".csv"):
            write_csv(path, content)
        else:
            raise ValueError(f"data files are .json or .csv, got {filename!r}")
        self.data_files.append(filename)

    def verdict(self, claim: str, verdict: str, evidence: str, sources: str = "", *, model: str = "",
                condition: str = "") -> None:
        self.verdicts.append(Verdict(claim, verdict, evidence, sources, model, condition))

    def markdown(self, directory: str = ".") -> str:
        """The section's markdown body, with figure paths relative to ``directory``."""
        body = "\n\n".join(part.replace("{dir}", directory) for part in self.parts)
        if self.data_files:
            files = ", ".join(f"[{name}]({directory}/{name})" for name in self.data_files)
            body += f"\n\nData: {files}."
        return body

    def save(self) -> None:
        record = {"name": self.name, "title": self.title, "question": self.question, "parts": self.parts,
                  "figures": [asdict(f) for f in self.figures], "data_files": self.data_files,
                  "verdicts": [asdict(v) for v in self.verdicts]}
        (self.out / "section.json").write_text(json.dumps(record, indent=1) + "\n")
        (self.out / "section.md").write_text(f"# {self.title}\n\n{self.markdown('.')}\n")

    @classmethod
    def load(cls, folder: Path) -> "Section":
        record = json.loads((Path(folder) / "section.json").read_text())
        return cls(name=record["name"], title=record["title"], out=Path(folder), question=record["question"],
                   parts=record["parts"], figures=[Figure(**f) for f in record["figures"]],
                   data_files=record["data_files"], verdicts=[Verdict(**v) for v in record["verdicts"]])


def new_section(ctx: Context, module_globals: dict, title: str) -> Section:
    """A Section for the analysis whose module globals are given (its name and docstring become the question)."""
    name = Path(module_globals["__file__"]).stem
    doc = (module_globals.get("__doc__") or "").strip()
    return Section(name=name, title=title, out=ctx.out, question=doc)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts) as CSV, the columns in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
