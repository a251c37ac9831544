"""The report's folder, replaced whole and atomically.

A report is written into a temporary folder beside its output folder
(``partial_folder``) and renamed into place only at the end (``replace_folder``),
so an interrupted run leaves the previous report intact.  The output folder must
be new, empty or a report this module wrote: its manifest (``report.json``) lists
every file of the report, and nothing else is ever replaced
(``check_output_folder``).  With ``--only``, the previous report's sections of
the analyses not run now are carried over (``carry_over``), and so is the previous
section of one that fails now (``keep_previous_sections``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

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


def check_store(store: Path, out: Path) -> Path:
    """``store`` resolved, if it lies outside ``out`` and is a usable sweep store (created if missing)."""
    from ..runs.store import RunStore

    store = store.expanduser().resolve()
    if store == out or out in store.parents:
        raise ValueError(f"--store {store} lies inside --out {out}, which the report replaces whole: "
                         "keep the store outside it")
    RunStore(store).close()
    return store


def write_manifest(folder: Path, meta: dict) -> None:
    """Write ``folder``'s manifest: ``meta`` and the list of every file in ``folder`` (``files``)."""
    meta = dict(meta, files=sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()))
    (folder / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")


def recorded_outcomes(folder: Path) -> dict[str, dict]:
    """The outcomes the report in ``folder`` recorded in its manifest, by analysis name ({} when none)."""
    try:
        return {o["name"]: o for o in json.loads((folder / MANIFEST).read_text())["analyses"]}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


# --- the temporary folder and the swap ------------------------------------------------------------------

def partial_folder(out: Path) -> Path:
    """A new temporary folder beside ``out`` named after this process, readable as an ordinary folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the report is an ordinary folder
    return tmp


def remove_abandoned(out: Path) -> None:
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
def terminate_as_exit():
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


def replace_folder(new: Path, out: Path) -> None:
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


# --- sections kept from the previous report --------------------------------------------------------------

def carry_over(previous: Path, tmp: Path, ran: list[str]) -> list[str]:
    """Copy the previous report's sections of analyses not run now into ``tmp``; returns their names."""
    carried = []
    if not previous.is_dir():
        return carried
    for folder in sorted(previous.iterdir()):
        if folder.is_dir() and folder.name not in ran and (folder / "section.json").exists():
            shutil.copytree(folder, tmp / folder.name)
            carried.append(folder.name)
    return carried


def keep_previous_sections(previous: Path, tmp: Path, failed: list[str]) -> list[str]:
    """Put back the previous report's section of each analysis in ``failed`` that the previous report ran
    well; returns their names."""
    good = {name for name, o in recorded_outcomes(previous).items() if o["ok"]}
    kept = [name for name in failed if name in good and (previous / name / "section.json").is_file()]
    for name in kept:
        shutil.rmtree(tmp / name)
        shutil.copytree(previous / name, tmp / name)
    return kept
