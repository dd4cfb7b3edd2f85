"""Other local users for the tests: group ids nobody has, and a directory another user can reach (pytest's
tmp_path is under a 0700 directory of root's). Switching users needs root; CI runs as root."""

from __future__ import annotations

import grp
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY = 65534  # uid and gid of nobody / nogroup on Debian


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to another user or giving files to any group needs root (CI runs as root)")


def unused_gids(count: int) -> list[int]:
    """Group ids no group on this machine has: a user is then in one only if a test puts it there."""
    taken = {group.gr_gid for group in grp.getgrall()}
    return [gid for gid in range(40000, 50000) if gid not in taken][:count]


@contextmanager
def reachable_dir() -> Iterator[Path]:
    """A fresh directory in /tmp that every user may pass through (0711, as /run is to reach /run/NAME)."""
    path = Path(tempfile.mkdtemp(prefix="metadata-proxy-test-"))
    try:
        path.chmod(0o711)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
