"""What a results file was measured on: the commit (and whether the tree had uncommitted changes), the date,
the machine. Written into every results file so that a figure in the docs can be traced to the code."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def provenance(out: Path) -> dict:
    """`out`, where results are being written, does not count as a change to the code measured."""
    exclude = [f":(exclude){out.resolve().relative_to(ROOT)}"] if out.resolve().is_relative_to(ROOT) else []
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *exclude).splitlines()
    return {"commit": _git("rev-parse", "HEAD").strip(), "dirty": bool(changed),
            "changed_files": [line[3:] for line in changed],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}


def describe(record: dict) -> str:
    """One sentence for the docs: when, at which commit, on what."""
    dirty = f", with uncommitted changes to {', '.join(record['changed_files'])}" if record["dirty"] else ""
    return (f"Measured {record['date']} at commit `{record['commit'][:12]}`{dirty}; {record['machine']['cpus']} "
            f"CPUs, Python {record['machine']['python']}.")
