"""The container endpoint's token file: created private, and an operator's file trusted only if it is private.

A token file that another local user could have written, or could read, or that is a link to somewhere else,
would hand that user the role: refused with one line, as ssh's StrictModes refuses key files.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from metadata_proxy.errors import ConfigError
from metadata_proxy.tokenfile import ensure_private_dir, load_or_create_token
from metadata_proxy.values import parse_group
from tests.support.users import NOBODY, needs_root, reachable_dir, unused_gids

TOKEN = "operator-chosen-token-0123456789"


def private_file(path: Path, content: str = TOKEN) -> Path:
    path.write_text(content)
    path.chmod(0o600)
    return path


def test_created_token_file_is_0600_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "role.token"
    token = load_or_create_token(str(path))
    assert path.read_text() == token and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(str(path)) == token  # kept across restarts: consumers keep working


def test_private_operator_token_is_used_verbatim(tmp_path: Path) -> None:
    assert load_or_create_token(str(private_file(tmp_path / "given.token"))) == TOKEN


@pytest.mark.parametrize("content", ["with-a-trailing-newline-123456\n", "short", " padded-token-0123456789 ",
                                     "line\r\nbreak-0123456789"])
def test_bad_operator_tokens_are_refused(tmp_path: Path, content: str) -> None:
    with pytest.raises(ConfigError):
        load_or_create_token(str(private_file(tmp_path / "bad.token", content)))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_operator_token_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = private_file(tmp_path / "given.token")
    path.chmod(mode)
    with pytest.raises(ConfigError, match=rf"other users may access it \(mode 0{mode:o}; chmod 600 it\)"):
        load_or_create_token(str(path))


def test_operator_token_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root (CI runs as root)")
    path = private_file(tmp_path / "planted.token")
    os.chown(path, 65534, 65534)  # nobody planted it first, in a shared directory
    with pytest.raises(ConfigError, match="owned by uid 65534, not by this user"):
        load_or_create_token(str(path))


def test_symlinked_token_file_is_refused_even_to_a_private_file(tmp_path: Path) -> None:
    target = private_file(tmp_path / "theirs.token")
    link = tmp_path / "given.token"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="it is a symbolic link"):
        load_or_create_token(str(link))


def test_token_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.token"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):  # and without waiting for a writer
        load_or_create_token(str(fifo))


def test_token_directory_replaced_by_a_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "metadata-proxy"
    path.write_text("not a directory")
    with pytest.raises(ConfigError, match=f"cannot use {path} as the token directory"):
        ensure_private_dir(str(path))


def test_token_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    with pytest.raises(ConfigError, match="must be owned by this user and not writable by others"):
        ensure_private_dir(str(path))


# --- a token group: consumers running as other users in it may read the token ---

def test_created_token_file_gets_the_group_and_0640(tmp_path: Path) -> None:
    needs_root()
    (group,) = unused_gids(1)
    path = tmp_path / "new-dir" / "role.token"
    token = load_or_create_token(str(path), group)
    info = path.stat()
    assert path.read_text() == token and stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == group
    directory = path.parent.stat()  # made here, so opened to the group: x (to reach the file), not r or w
    assert stat.S_IMODE(directory.st_mode) == 0o710 and directory.st_gid == group
    assert load_or_create_token(str(path), group) == token
    assert not [name for name in os.listdir(path.parent) if name.startswith(".token-")]


def test_default_directory_0700_lets_the_group_through_as_0710(tmp_path: Path) -> None:
    """/run/metadata-proxy is made 0700: a consumer in the group could not reach the 0640 file inside."""
    needs_root()
    (group,) = unused_gids(1)
    directory = tmp_path / "metadata-proxy"
    ensure_private_dir(str(directory))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    ensure_private_dir(str(directory), group)
    info = directory.stat()
    assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_gid == group


def test_directory_others_may_pass_is_left_as_it_is(tmp_path: Path) -> None:
    needs_root()
    (group,) = unused_gids(1)
    directory = tmp_path / "shared-volume"
    directory.mkdir()
    directory.chmod(0o755)
    ensure_private_dir(str(directory), group)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755 and directory.stat().st_gid == 0


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_private_or_group_readable_operator_file_is_used_and_given_to_the_group(tmp_path: Path, mode: int) -> None:
    needs_root()
    (group,) = unused_gids(1)
    path = private_file(tmp_path / "given.token")
    os.chown(path, 0, group)
    path.chmod(mode)
    assert load_or_create_token(str(path), group) == TOKEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_gid == group


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o650, 0o604, 0o670])
def test_with_a_group_other_access_or_group_write_is_still_refused(tmp_path: Path, mode: int) -> None:
    needs_root()
    (group,) = unused_gids(1)
    path = private_file(tmp_path / "given.token")
    os.chown(path, 0, group)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=rf"users other than its owner and group {group} may access it "
                                          rf"\(mode 0{mode:o}, group {group}; chmod 640 it and chgrp {group} it\)"):
        load_or_create_token(str(path), group)
    assert stat.S_IMODE(path.stat().st_mode) == mode  # refused files are left alone


def test_with_a_group_a_file_readable_by_another_group_is_refused(tmp_path: Path) -> None:
    needs_root()
    group, other = unused_gids(2)
    path = private_file(tmp_path / "given.token")
    os.chown(path, 0, other)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=rf"\(mode 0640, group {other}; chmod 640 it and chgrp {group} it\)"):
        load_or_create_token(str(path), group)


def test_with_a_group_a_symlink_is_still_refused(tmp_path: Path) -> None:
    needs_root()
    (group,) = unused_gids(1)
    target = private_file(tmp_path / "theirs.token")
    os.chown(target, 0, group)
    target.chmod(0o640)
    link = tmp_path / "given.token"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="it is a symbolic link"):
        load_or_create_token(str(link), group)


def test_without_the_group_option_a_group_readable_file_is_refused(tmp_path: Path) -> None:
    needs_root()
    (group,) = unused_gids(1)
    path = private_file(tmp_path / "given.token")
    os.chown(path, 0, group)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"other users may access it \(mode 0640; chmod 600 it\)"):
        load_or_create_token(str(path))


# A user outside the group cannot give files to it: one clear line, and no half-made token file.
NOT_A_MEMBER = f"""
import os, sys
from metadata_proxy.errors import ConfigError
from metadata_proxy.tokenfile import load_or_create_token
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
try:
    load_or_create_token(sys.argv[1], int(sys.argv[2]))
except ConfigError as error:
    print(error)
"""


def test_a_daemon_user_outside_the_group_gets_a_clear_error() -> None:
    needs_root()
    (group,) = unused_gids(1)
    with reachable_dir() as base:
        directory = base / "nobody"
        directory.mkdir()
        os.chown(directory, NOBODY, NOBODY)
        path = directory / "role.token"
        result = subprocess.run([sys.executable, "-c", NOT_A_MEMBER, str(path), str(group)], capture_output=True,
                                text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
        assert result.stdout == (f"cannot give container token file {path} to group {group}: Operation not "
                                 "permitted (this user must be a member of that group)\n"), result.stderr
        assert os.listdir(directory) == []


def test_group_is_a_name_or_a_gid() -> None:
    assert parse_group("root") == 0
    assert parse_group("40001") == 40001  # no name needed: a container's groups may have none
    with pytest.raises(ValueError, match="no such group: no-such-group-here"):
        parse_group("no-such-group-here")
    with pytest.raises(ValueError, match="expected a uid"):
        parse_group("4294967295")
