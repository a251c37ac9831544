"""Where a report comes from: the fpsim version, the checkout's commit, the machine, the time."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def provenance(output: Path | None = None) -> dict:
    """The fpsim version, the commit (``git_commit``), the time (UTC, to the minute), Python and the machine."""
    import fpsim

    return {"fpsim_version": fpsim.__version__, "git_commit": git_commit(output),
            "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"}


def git_commit(output: Path | None = None, checkout: Path = Path(__file__).parent) -> str:
    """The checkout's short commit, "with uncommitted changes" if tracked files outside ``output`` differ from it.

    The report's own folder is left out: a report written over a committed one
    is not a change to the code that made it.  "" outside a git checkout.
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
