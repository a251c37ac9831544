"""The report: run the analyses in ``analyses/`` and assemble ``REPORT.md``.

An analysis is a script ``analyses/NAME.py`` with an ``ORDER`` number (its place
in the report), a docstring (the question it answers), ``run(ctx) -> Section`` and,
when it needs an optional engine, ``NEEDS`` (module names, e.g. ``("torch",)``).
It configures runs, calls the library, and records what it found in a
:class:`Section`: what was run, text and tables, figures (PNG) and data (JSON,
CSV), and for the claims, verdicts.  ``python analyses/NAME.py [--quick] [--out DIR]``
runs one on its own (``analysis_main``).

``run_report`` runs several into a temporary folder beside the output folder and
renames it into place only at the end, so an interrupted run leaves the previous
report intact.  An analysis that raises is reported as failed, with its error, and
the others still run; one whose ``NEEDS`` cannot be imported is skipped, and
``REPORT.md`` says which and why.  ``REPORT.md`` opens with a summary page: the
verdict table (per claim, one verdict per model and an overall one) and the
figures the analyses mark as key.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import importlib.util
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .table import markdown_table

ANALYSES_DIR = Path(__file__).resolve().parents[2] / "analyses"
"""Where the analysis scripts live: ``analyses/`` at the root of the repository."""

VERDICTS = ("holds", "holds under conditions", "not supported by the evidence")
"""The verdicts a claim can get."""

MAX_KEY_FIGURES = 4
"""How many key figures the summary page shows."""

MODELS = ("MLP", "conv net", "transformer")
"""The models a claim gets a verdict on (``Verdict.model``), in the summary's order."""

INSTALL_HINTS = {"torch": "pip install fpsim[torch]"}
"""How to install a module an analysis ``NEEDS``."""


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

    def __post_init__(self):
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.store is None:
            self.store = self.out / "runs.sqlite"

    pool: "LazyPool" = field(default_factory=lambda: LazyPool(), repr=False)
    """The process pool for training sweeps, shared by the analyses of one report."""

    def pick(self, quick, full):
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full

    def executor(self):
        """The shared process pool (``fpsim.runs.sweep.local_pool``: one worker per core), started on first use."""
        return self.pool.get()

    def close(self) -> None:
        self.pool.close()


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
class Figure:
    """A figure written by an analysis: its file (relative to the analysis folder) and caption."""

    path: str
    caption: str
    key: bool = False
    """Shown on the summary page."""


@dataclass
class Verdict:
    """A verdict on one claim, with its evidence (markdown) and sources.

    ``model``: the model the verdict is about (one of ``MODELS``), or "" for a claim judged
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


# --- tables and files --------------------------------------------------------

def write_csv(path: Path, rows: list[dict]) -> None:
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


# --- discovery -----------------------------------------------------------------

def available_analyses(analyses_dir: Path | None = None) -> list[str]:
    """Names of the analysis scripts (``analyses/NAME.py``), sorted by name."""
    folder = Path(analyses_dir or ANALYSES_DIR)
    if not folder.is_dir():
        raise ValueError(f"no analyses folder at {folder}: fpsim report runs the scripts of a clone of the "
                         "repository, so install fpsim from the clone with pip install -e .")
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def load_analysis(name: str, analyses_dir: Path | None = None):
    """Import ``analyses/NAME.py`` as a module."""
    path = Path(analyses_dir or ANALYSES_DIR) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fpsim_analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise ValueError(f"analysis {name} ({path}) has no run(ctx) function")
    return module


def select_analyses(only, analyses_dir: Path | None = None) -> list[str]:
    """The analyses to run: ``only`` (names) or all; an unknown name raises ValueError listing the names."""
    names = available_analyses(analyses_dir)
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise ValueError(f"unknown analysis {', '.join(unknown)}: choose from {', '.join(names)}")
        return list(dict.fromkeys(only))
    return names


# --- running -------------------------------------------------------------------

@dataclass
class Outcome:
    """How one analysis went."""

    name: str
    ok: bool
    seconds: float
    error: str = ""
    """The exception's last line when it failed (the full traceback is in ``NAME/error.txt``)."""
    skipped: str = ""
    """Why it was not run (a module it ``NEEDS`` is missing); "" when it ran."""


def missing_needs(module) -> str:
    """Why ``module`` (an analysis) cannot run here: its ``NEEDS`` that do not import, with how to install
    them; "" when all import."""
    missing = []
    for need in getattr(module, "NEEDS", ()):
        try:
            importlib.import_module(need)
        except ImportError:
            missing.append(need)
    return "; ".join(f"needs {need}, which is not installed ({INSTALL_HINTS.get(need, f'pip install {need}')})"
                     for need in missing)


def run_one(name: str, ctx: Context, analyses_dir: Path | None = None) -> tuple[Section, Outcome]:
    """Run one analysis into ``ctx.out``; an exception is caught and recorded (KeyboardInterrupt is not).

    An analysis whose ``NEEDS`` do not import is not run: its section says why (``Outcome.skipped``).
    """
    start = time.perf_counter()
    try:
        module = load_analysis(name, analyses_dir)
        reason = missing_needs(module)
        if reason:
            section = Section(name=name, title=f"{name} (skipped)", out=ctx.out,
                              question=(module.__doc__ or "").strip())
            section.text(f"**Not run:** this analysis {reason}.")
            section.save()
            return section, Outcome(name, True, time.perf_counter() - start, skipped=reason)
        import matplotlib.pyplot as plt

        from .plots import FIGURE_STYLE

        with plt.style.context(FIGURE_STYLE):
            section = module.run(ctx)
        if not isinstance(section, Section):
            raise TypeError(f"analysis {name}: run(ctx) returned {type(section).__name__}, not a Section")
        section.save()
        return section, Outcome(name, True, time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - a failing analysis is reported, the others still run
        trace = traceback.format_exc()
        (ctx.out / "error.txt").write_text(trace)
        message = f"{type(error).__name__}: {error}"
        section = Section(name=name, title=f"{name} (failed)", out=ctx.out)
        section.text(f"**This analysis failed** after {time.perf_counter() - start:.1f} s:\n\n"
                     f"```\n{message}\n```\n\nThe traceback is in [error.txt]({{dir}}/error.txt).")
        section.save()
        return section, Outcome(name, False, time.perf_counter() - start, message)


@dataclass
class ReportResult:
    out: Path
    outcomes: list[Outcome]
    seconds: float

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def run_report(out="reports", *, quick: bool = False, only=None, progress: bool = True,
               store: Path | None = None, analyses_dir: Path | None = None) -> ReportResult:
    """Run the analyses (all, or ``only``) and write ``out/REPORT.md``.

    Everything is written into a temporary folder beside ``out`` that replaces
    ``out`` only when all analyses have run; an interruption (Ctrl-C, SIGTERM)
    removes the temporary folder and leaves ``out`` as it was.  ``out`` must be new,
    empty, or a report this function wrote (``check_output_folder``): nothing else
    is ever replaced.  With ``only``, the other analyses' sections of the previous
    report in ``out`` are carried over unchanged, and so is the previous section of
    one that fails now.  ``store``: a sweep store to reuse (default: a new one,
    dropped at the end).
    """
    out = check_output_folder(out)
    if store:
        store = _check_store(Path(store), out)
    names = sorted(select_analyses(only, analyses_dir), key=lambda name: (_order(name, analyses_dir), name))
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    with _terminate_as_exit():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        try:
            return _run_into(tmp, out, names, quick=quick, only=only, progress=progress, store=store,
                             analyses_dir=analyses_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _run_into(tmp: Path, out: Path, names: list[str], *, quick, only, progress, store, analyses_dir) -> ReportResult:
    """Run ``names`` into ``tmp``, write REPORT.md there and swap it into ``out``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the report is an ordinary folder
    start = time.perf_counter()
    shared_store = store or tmp / "runs.sqlite"
    outcomes = []
    pool = LazyPool()
    try:
        for index, name in enumerate(names, 1):
            _say(progress, f"[{index}/{len(names)}] {name} ...")
            ctx = Context(out=tmp / name, quick=quick, progress=progress, store=shared_store, pool=pool)
            _, outcome = run_one(name, ctx, analyses_dir)
            outcomes.append(outcome)
            status = (f"skipped ({outcome.skipped})" if outcome.skipped else "done" if outcome.ok
                      else f"FAILED ({outcome.error})")
            _say(progress, f"[{index}/{len(names)}] {name} {status} in {outcome.seconds:.1f} s")
    finally:
        pool.close()
    carried = _carry_over(out, tmp, names) if only else []
    if only:
        _keep_previous_sections(out, tmp, outcomes)
    if not store and shared_store.exists():
        shared_store.unlink()
    seconds = time.perf_counter() - start
    write_report_md(tmp, outcomes, carried, quick=quick, seconds=seconds, analyses_dir=analyses_dir, output=out)
    _replace_folder(tmp, out)
    return ReportResult(out, outcomes, seconds)


MANIFEST = "report.json"
"""The file by which a report recognises a folder it wrote: it lists every file of the report (``files``)."""


def check_output_folder(out) -> Path:
    """``out`` resolved, if a report may be written there; else ValueError saying why, in one line.

    The report replaces its folder whole, so the folder must be new, empty, or a
    previous report holding only what its manifest (``report.json``) lists; it may
    not be a file, nor the current folder or one that holds it.
    """
    if not str(out).strip():
        raise ValueError("--out is empty: name the report's folder, e.g. --out reports")
    folder = Path(out).resolve()
    here = Path.cwd().resolve()
    if folder == here or folder in here.parents:
        raise ValueError(f"--out {out}: the report replaces its folder whole, and this one is the current folder "
                         f"or holds it; choose a folder of its own, e.g. --out {Path(out) / 'report'}")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: choose a new folder or a previous report's")
    if folder.is_dir():
        foreign = _not_from_a_report(folder)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ValueError(f"--out {out} holds files a report did not write ({shown}); the report replaces "
                             "its folder whole, so choose a new or empty folder, or a previous report's")
    return folder


def _not_from_a_report(folder: Path, most: int = 4) -> list[str]:
    """Up to ``most`` paths in ``folder`` (relative to it) that a report did not write, by its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if "files" in manifest:
            written = set(manifest["files"]) | {MANIFEST}
            written |= {parent.as_posix() for name in written for parent in Path(name).parents if parent != Path(".")}
            ours = written.__contains__
        else:  # a report from before the manifest listed its files: its top-level names
            top = {MANIFEST, "REPORT.md"} | {o["name"] for o in manifest["analyses"]}
            ours = lambda name: name.split("/")[0] in top  # noqa: E731
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        ours = lambda name: False  # noqa: E731
    foreign = []
    try:
        for path in folder.rglob("*"):  # stops at the first few: a big foreign folder is not walked through
            name = path.relative_to(folder).as_posix()
            if not ours(name):
                foreign.append(name)
                if len(foreign) == most:
                    break
    except OSError as error:
        foreign.append(f"(unreadable: {error.strerror})")
    return foreign


def _check_store(store: Path, out: Path) -> Path:
    """``store`` resolved, if it lies outside ``out`` and is a usable sweep store (created if missing)."""
    from ..runs.store import RunStore

    store = store.expanduser().resolve()
    if store == out or out in store.parents:
        raise ValueError(f"--store {store} lies inside --out {out}, which the report replaces whole: "
                         "keep the store outside it")
    RunStore(store).close()
    return store


def _remove_abandoned(out: Path) -> None:
    """Remove the temporary folders of reports into ``out`` whose process is gone (killed with SIGKILL)."""
    for folder in out.parent.glob(f".{out.name}.partial-*-*"):
        pid = folder.name[len(f".{out.name}.partial-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def _terminate_as_exit():
    """Inside the block, SIGTERM raises SystemExit(143), so that the clean-up of an interrupt runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _keep_previous_sections(previous: Path, tmp: Path, outcomes: list[Outcome]) -> None:
    """Put back the previous report's section of each analysis that failed now (and say so in its outcome)."""
    meta = previous / MANIFEST
    try:
        good = {o["name"] for o in json.loads(meta.read_text())["analyses"] if o["ok"]}
    except (OSError, ValueError, TypeError, KeyError):
        return
    for outcome in outcomes:
        if not outcome.ok and outcome.name in good and (previous / outcome.name / "section.json").is_file():
            shutil.rmtree(tmp / outcome.name)
            shutil.copytree(previous / outcome.name, tmp / outcome.name)
            outcome.error += " (the previous section is kept)"


def _order(name: str, analyses_dir: Path | None = None) -> int:
    """An analysis's place in the report (its ``ORDER``; 100 when it has none or does not load)."""
    try:
        return getattr(load_analysis(name, analyses_dir), "ORDER", 100)
    except Exception:  # noqa: BLE001 - a broken script is reported when it runs; here it only goes last
        return 100


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"fpsim report: {message}", file=sys.stderr, flush=True)


def _carry_over(previous: Path, tmp: Path, ran: list[str]) -> list[str]:
    """Copy the previous report's sections of analyses not run now; returns their names."""
    carried = []
    if not previous.is_dir():
        return carried
    for folder in sorted(previous.iterdir()):
        if folder.is_dir() and folder.name not in ran and (folder / "section.json").exists():
            shutil.copytree(folder, tmp / folder.name)
            carried.append(folder.name)
    meta = previous / "report.json"
    recorded = {o["name"]: o for o in json.loads(meta.read_text()).get("analyses", [])} if meta.exists() else {}
    outcomes = [recorded.get(name, asdict(Outcome(name, True, 0.0))) for name in carried]
    (tmp / "carried.json").write_text(json.dumps(outcomes, indent=1) + "\n")
    return carried


def _replace_folder(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``: a previous ``out`` is renamed aside, ``new`` renamed into place, the old one removed.

    POSIX cannot rename a folder over a non-empty one, so the swap takes two
    renames, with nothing between them; ``out`` does not exist in between.
    SIGINT and SIGTERM arriving then are deferred to the end of the swap
    (``_signals_deferred``), so what can still leave no ``out`` is a kill that
    cannot be caught (SIGKILL, a power loss) in that window: the previous report is
    then in the ``.NAME.old-*`` folder beside it.  If the second rename fails,
    the old folder is renamed back and an ``OSError`` says so.
    """
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)  # a fresh name beside out, on the same file system
    swapped = False
    try:
        with _signals_deferred():
            os.rename(out, old)
            try:
                os.rename(new, out)
            except OSError as error:
                _restore(old, out, error)
            swapped = True
    finally:  # a deferred signal is raised on leaving the with block: the old folder still goes
        if swapped:
            shutil.rmtree(old, ignore_errors=True)


def _restore(old: Path, out: Path, error: OSError) -> None:
    """Rename the previous report ``old`` back to ``out`` after the new one failed to move in; always raises."""
    try:
        os.rename(old, out)
    except OSError as second:
        raise OSError(f"could not move the new report into {out} ({error}), nor the previous report back "
                      f"({second}): the previous report is in {old}") from error
    raise OSError(f"could not move the new report into {out} ({error}); the previous report is back in place") \
        from error


@contextlib.contextmanager
def _signals_deferred():
    """Catch SIGINT and SIGTERM inside the block and raise them again on leaving it.

    Python runs signal handlers in the main thread only: there this closes the
    window; in another thread no handler can interrupt the block anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    handled = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in caught:
            signal.raise_signal(number)


# --- REPORT.md ---------------------------------------------------------------------

def write_report_md(folder: Path, outcomes: list[Outcome], carried: list[str], *, quick: bool, seconds: float,
                    analyses_dir: Path | None = None, output: Path | None = None) -> None:
    """Assemble ``folder/REPORT.md`` from the sections in its sub-folders, summary page first.

    ``output``: where the report will be moved; changes there do not count as uncommitted code changes.
    """
    import fpsim

    carried_outcomes = []
    if (folder / "carried.json").exists():
        carried_outcomes = [Outcome(**o) for o in json.loads((folder / "carried.json").read_text())]
        (folder / "carried.json").unlink()
    all_outcomes = outcomes + carried_outcomes
    order = {o.name: _order(o.name, analyses_dir) for o in all_outcomes}
    all_outcomes.sort(key=lambda o: (order[o.name], o.name))
    sections = {o.name: Section.load(folder / o.name) for o in all_outcomes}
    meta = {"fpsim_version": fpsim.__version__, "git_commit": _git_commit(output), "quick": quick,
            "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(seconds, 1), "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
            "command": "fpsim report" + (" --quick" if quick else ""),
            "analyses": [asdict(o) for o in all_outcomes], "carried_over": carried}
    md = _report_markdown(meta, all_outcomes, sections, carried, quick, seconds)
    (folder / "REPORT.md").write_text(md)
    meta["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (folder / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")


def _report_markdown(meta, all_outcomes, sections, carried, quick, seconds) -> str:
    """The text of REPORT.md."""
    md = io.StringIO()
    w = md.write
    w("# fpsim report: what the mixed-precision recipe claims, measured\n\n")
    mode = "quick run (small budget: fewer seeds and steps; numbers are indicative)" if quick else "full run"
    w(f"Generated by `{meta['command']}` (fpsim {meta['fpsim_version']}"
      + (f", commit {meta['git_commit']}" if meta["git_commit"] else "")
      + f") on {meta['generated_utc']}, {meta['machine']}, Python {meta['python']}: {mode}, "
      f"{_minutes(seconds)} for the analyses run now.\n\n")
    failed = [o for o in all_outcomes if not o.ok]
    if failed:
        w("**Failed analyses:** " + "; ".join(f"{o.name} ({o.error})" for o in failed) + ".\n\n")
    skipped = [o for o in all_outcomes if o.skipped]
    if skipped:
        w("**Skipped analyses:** " + "; ".join(f"{o.name} ({o.skipped})" for o in skipped) + ".\n\n")
    if carried:
        w(f"Carried over unchanged from the previous report (not run now): {', '.join(carried)}.\n\n")

    w("## Summary\n\n")
    verdicts = [v for s in sections.values() for v in s.verdicts]
    if verdicts:
        w(summary_table(verdicts, skipped=[o.name for o in skipped]) + "\n\n")
    else:
        w("No verdicts: the claims analysis was not run or failed.\n\n")
    key_figures = [(s, f) for s in sections.values() for f in s.figures if f.key][:MAX_KEY_FIGURES]
    for section, fig in key_figures:
        w(f"![{fig.caption}]({section.name}/{fig.path})\n\n*{fig.caption}* (from [{section.title}](#{_anchor(section.title)}))\n\n")

    w("## Contents\n\n| analysis | status | time |\n| --- | --- | --- |\n")
    for o in all_outcomes:
        status = f"skipped: {o.skipped}" if o.skipped else "ok" if o.ok else "**failed**"
        if o.name in carried:
            status += " (previous report)"
        w(f"| [{sections[o.name].title}](#{_anchor(sections[o.name].title)}) | {status} | {_minutes(o.seconds)} |\n")
    w("\n")
    for o in all_outcomes:
        section = sections[o.name]
        w(f"## {section.title}\n\n")
        if section.question:
            w(f"*{_one_line(section.question)}* (`analyses/{o.name}.py`, {_minutes(o.seconds)})\n\n")
        w(section.markdown(o.name) + "\n\n")
        if section.verdicts:
            w("### Verdicts\n\n")
            for v in section.verdicts:
                w(f"- **{v.claim}" + (f" ({v.model})" if v.model else "") + f": {v.verdict}.** {v.evidence.strip()}"
                  + (f" Sources: {v.sources.strip()}" if v.sources else "") + "\n")
            w("\n")
    return md.getvalue()


def summary_table(verdicts: list[Verdict], skipped=()) -> str:
    """The summary's verdict table: one row per claim judged once; for a claim judged per model, an
    overall row (``overall_verdict``) followed by one row per model.  ``skipped``: analyses not run, named
    where a model has no verdict."""
    by_claim: dict[str, list[Verdict]] = {}
    for v in verdicts:
        by_claim.setdefault(v.claim, []).append(v)
    lines = ["| claim | model | verdict | evidence (details below) |", "| --- | --- | --- | --- |"]
    for claim, group in by_claim.items():
        per_model = sorted((v for v in group if v.model), key=lambda v: MODELS.index(v.model))
        for v in group:
            if not v.model:
                lines.append(f"| {claim} | | **{v.verdict}** | {_one_line(v.evidence)} |")
        if per_model:
            verdict, evidence = overall_verdict(per_model, skipped)
            lines.append(f"| {claim} | overall | **{verdict}** | {_one_line(evidence)} |")
            lines += [f"| | {v.model} | **{v.verdict}** | {_one_line(v.evidence)} |" for v in per_model]
    return "\n".join(lines)


def overall_verdict(per_model: list[Verdict], skipped=()) -> tuple[str, str]:
    """One verdict over the models' verdicts on a claim, and its conditions (markdown).

    The same verdict on every model judged is the overall verdict; otherwise the claim
    "holds under conditions" if it holds (or holds under conditions) on at least one model,
    and the conditions name the models on which it does not, and each model's own
    conditions.  Models without a verdict are named as not judged.
    """
    verdicts = {v.verdict for v in per_model}
    if len(verdicts) == 1:
        verdict = verdicts.pop()
    elif verdicts & {"holds", "holds under conditions"}:
        verdict = "holds under conditions"
    else:
        verdict = "not supported by the evidence"
    parts = []
    for kind in VERDICTS:
        models = [v for v in per_model if v.verdict == kind]
        if not models:
            continue
        if kind == "holds under conditions":
            parts += [f"{kind} on the {v.model}" + (f" ({v.condition})" if v.condition else "") for v in models]
        else:
            parts.append(f"{kind} on the {_and([v.model for v in models])}")
    text = "; ".join(parts) + "."
    absent = [m for m in MODELS if m not in {v.model for v in per_model}]
    if absent:
        why = f" (skipped: {', '.join(skipped)})" if skipped else ""
        text += f" Not judged on the {_and(absent)}{why}."
    return verdict, text[0].upper() + text[1:]


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, spaces to dashes, punctuation dropped."""
    keep = [c for c in title.lower() if c.isalnum() or c in " -_"]
    return "".join(keep).replace(" ", "-")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _git_commit(output: Path | None = None, checkout: Path = Path(__file__).parent) -> str:
    """The checkout's short commit, "with uncommitted changes" if tracked files outside ``output`` differ from it.

    The report's own folder is left out: a report written over a committed one
    is not a change to the code that made it.
    """
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if result.returncode != 0:
        return ""
    exclude = [f":(exclude){Path(output).resolve()}"] if output is not None else []
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *exclude],
                           cwd=checkout, capture_output=True, text=True, timeout=10).stdout.strip()
    return result.stdout.strip() + (" with uncommitted changes" if dirty else "")


# --- one analysis from the command line --------------------------------------------

def analysis_main(module_globals: dict, argv=None) -> int:
    """``python analyses/NAME.py [--quick] [--out DIR]``: run one analysis and write its section there."""
    name = Path(module_globals["__file__"]).stem
    parser = argparse.ArgumentParser(prog=f"analyses/{name}.py",
                                     description=(module_globals.get("__doc__") or "").strip())
    parser.add_argument("--quick", action="store_true", help="small budget (fewer seeds and steps)")
    parser.add_argument("--out", default=f"build/analyses/{name}", help="output folder (default: %(default)s)")
    parser.add_argument("--store", default=None, help="sweep store to reuse (default: OUT/runs.sqlite)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    ctx = Context(out=Path(args.out), quick=args.quick, progress=not args.no_progress,
                  store=Path(args.store) if args.store else None)
    try:
        section, outcome = run_one(name, ctx, Path(module_globals["__file__"]).resolve().parent)
    finally:
        ctx.close()
    if outcome.skipped:
        print(f"{name}: skipped: it {outcome.skipped}", file=sys.stderr)
        return 0
    if not outcome.ok:
        print(f"{name}: failed after {outcome.seconds:.1f} s: {outcome.error} (traceback in "
              f"{ctx.out / 'error.txt'})", file=sys.stderr)
        return 1
    print(f"{name}: wrote {ctx.out / 'section.md'} ({len(section.figures)} figures, "
          f"{len(section.data_files)} data files) in {outcome.seconds:.1f} s", file=sys.stderr)
    return 0
