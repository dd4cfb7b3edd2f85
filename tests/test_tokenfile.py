"""The container endpoint's token file: created private, and an operator's file trusted only if it is private.

A token file that another local user could have written, or could read, or that is a link to somewhere else,
would hand that user the role: refused with one line, as ssh's StrictModes refuses key files.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from metadata_proxy.errors import ConfigError
from metadata_proxy.tokenfile import default_token_dir, ensure_private_dir, load_or_create_token
from metadata_proxy.values import parse_group
from tests.support.users import NOBODY, needs_root, reachable_dir, unused_gids

TOKEN = "operator-chosen-token-0123456789"


def private_file(path: Path, content: str = TOKEN) -> Path:
    path.write_text(content)
    path.chmod(0o600)
    return path


def group_file(path: Path, gid: int, mode: int = 0o640) -> Path:
    """A token file owned by root (the daemon's user here) with group gid and that mode."""
    private_file(path)
    os.chown(path, 0, gid)
    path.chmod(mode)
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
    path = group_file(tmp_path / "given.token", group, mode)
    assert load_or_create_token(str(path), group) == TOKEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_gid == group


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o650, 0o604, 0o670])
def test_with_a_group_other_access_or_group_write_is_still_refused(tmp_path: Path, mode: int) -> None:
    needs_root()
    (group,) = unused_gids(1)
    path = group_file(tmp_path / "given.token", group, mode)
    with pytest.raises(ConfigError, match=rf"users other than its owner and group {group} may access it "
                                          rf"\(mode 0{mode:o}, group {group}; chmod 640 it and chgrp {group} it\)"):
        load_or_create_token(str(path), group)
    assert stat.S_IMODE(path.stat().st_mode) == mode  # refused files are left alone


def test_with_a_group_a_file_readable_by_another_group_is_refused(tmp_path: Path) -> None:
    needs_root()
    group, other = unused_gids(2)
    path = group_file(tmp_path / "given.token", other)
    with pytest.raises(ConfigError, match=rf"\(mode 0640, group {other}; chmod 640 it and chgrp {group} it\)"):
        load_or_create_token(str(path), group)


def test_with_a_group_a_symlink_is_still_refused(tmp_path: Path) -> None:
    needs_root()
    (group,) = unused_gids(1)
    target = group_file(tmp_path / "theirs.token", group)
    link = tmp_path / "given.token"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="it is a symbolic link"):
        load_or_create_token(str(link), group)


def test_without_the_group_option_a_group_readable_file_is_refused(tmp_path: Path) -> None:
    needs_root()
    (group,) = unused_gids(1)
    path = group_file(tmp_path / "given.token", group)
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


# --- where the default file lives, and the exact line for each refusal ---

@pytest.mark.parametrize(("environ", "uid", "expected"), [
    ({"RUNTIME_DIRECTORY": "/run/metadata-proxy:/run/other"}, 0, "/run/metadata-proxy"),  # systemd's first one
    ({"RUNTIME_DIRECTORY": "/run/mp", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/mp"),
    ({"RUNTIME_DIRECTORY": "", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, "/run/user/1000/metadata-proxy"),
    ({}, 0, "/run/metadata-proxy"),
    ({}, 1, "/tmp/metadata-proxy-1"),  # the uid next to root's gets a private directory in /tmp
    ({"XDG_RUNTIME_DIR": ""}, 1000, "/tmp/metadata-proxy-1000"),
])
def test_default_token_directory(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], uid: int,
                                 expected: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert default_token_dir(environ) == expected


@pytest.mark.parametrize(("content", "reason"), [
    ("with-a-trailing-newline-123456\n", "the token has surrounding whitespace or a newline; clients send it "
     "verbatim and botocore rejects it: write it without one (printf %s TOKEN > FILE)"),
    ("line\r\nbreak-0123456789", "the token has surrounding whitespace or a newline; clients send it "
     "verbatim and botocore rejects it: write it without one (printf %s TOKEN > FILE)"),
    ("fifteen-chars-x", "the token must be 16 to 4096 printable ASCII characters"),
    ("a" * 4097, "the token must be 16 to 4096 printable ASCII characters"),  # refused, not cut to 4096
    ("a-tab\tin-the-middle-0123", "the token must be 16 to 4096 printable ASCII characters"),
    ("bell\x07-in-the-middle-0123", "the token must be 16 to 4096 printable ASCII characters"),
    ("caf\u00e9-token-0123456789", "the token must be printable ASCII"),
])
def test_bad_operator_tokens_get_one_line_naming_the_file(tmp_path: Path, content: str, reason: str) -> None:
    path = private_file(tmp_path / "bad.token", content)
    with pytest.raises(ConfigError) as refused:
        load_or_create_token(str(path))
    assert str(refused.value) == f"{path}: {reason}"


@pytest.mark.parametrize("content", ["sixteen-chars-xx", "a" * 4096, "X-marks-the-token-0123", "~!@#$%^&*()_+{}|:<>?"])
def test_tokens_at_the_limits_are_used_verbatim(tmp_path: Path, content: str) -> None:
    assert load_or_create_token(str(private_file(tmp_path / "given.token", content))) == content


def test_a_new_token_has_256_bits_in_43_url_safe_characters(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    directory.mkdir()  # a directory that exists already
    token = load_or_create_token(str(directory / "role.token"))
    assert len(token) == 43 and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert os.listdir(directory) == ["role.token"]


def test_a_new_token_is_written_next_to_its_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is made in the token's own directory, so that the rename is atomic (one filesystem)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temporary-directory"))
    path = tmp_path / "tokens" / "role.token"
    token = load_or_create_token(str(path))
    assert path.read_text() == token


def test_a_path_through_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "role.token"
    with pytest.raises(ConfigError) as refused:
        load_or_create_token(str(path))
    assert str(refused.value) == f"cannot read container token file {path}: Not a directory"


def test_a_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    dangling = tmp_path / "tokens"
    dangling.symlink_to(tmp_path / "gone")
    path = dangling / "role.token"
    with pytest.raises(ConfigError) as refused:
        load_or_create_token(str(path))
    assert str(refused.value) == f"cannot write container token file {path}: File exists"


def test_a_symlink_as_the_token_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    link = tmp_path / "metadata-proxy"
    link.symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError) as refused:
        ensure_private_dir(str(link))
    assert str(refused.value) == f"cannot use {link} as the token directory: it is not a directory"


# --- a token group: who may pass through the directory, and what a user outside the group is told ---

@pytest.mark.parametrize(("mode", "own_group", "changed"), [
    (0o710, True, False),  # the group may pass already
    (0o750, True, False),  # ... and may list it too: the operator's choice, left alone
    (0o701, True, True),  # others may pass, but a member of the directory's group is judged by the group bits
    (0o701, False, False),  # another group's directory that others may pass: the group passes as others
    (0o710, False, True),  # another group's directory: its group bits do not help this group
    (0o700, False, True),
])
def test_the_group_passes_through_the_token_directory(tmp_path: Path, mode: int, own_group: bool,
                                                      changed: bool) -> None:
    needs_root()
    group, other = unused_gids(2)
    directory = tmp_path / "metadata-proxy"
    directory.mkdir()
    os.chown(directory, 0, group if own_group else other)
    directory.chmod(mode)
    ensure_private_dir(str(directory), group)
    info = directory.stat()
    after = (0o710, group) if changed else (mode, group if own_group else other)
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == after
    assert info.st_uid == 0  # only the group changes hands


@pytest.mark.parametrize(("mode", "own_group", "warned"), [
    (0o700, False, True), (0o711, False, False), (0o710, True, False), (0o701, True, True)])
def test_an_operators_directory_the_group_cannot_pass_is_warned_about(tmp_path: Path, mode: int, own_group: bool,
                                                                      warned: bool,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A directory this daemon did not make is not changed: one warning naming the fix."""
    needs_root()
    (group,) = unused_gids(1)
    directory = tmp_path / "operators"
    directory.mkdir()
    if own_group:
        os.chown(directory, 0, group)
    directory.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="metadata_proxy"):
        load_or_create_token(str(directory / "role.token"), group)
    assert stat.S_IMODE(directory.stat().st_mode) == mode
    expected = [f"group {group} cannot pass through {directory} to read the container token file in it: give it x "
                f"(chgrp {group} and chmod g+x, or o+x)"] if warned else []
    assert [record.getMessage() for record in caplog.records] == expected


def test_a_private_file_of_another_group_is_given_to_the_token_group(tmp_path: Path) -> None:
    """0600 keeps every group out, whatever the file's group: it is used, and then given to the token group."""
    needs_root()
    group, other = unused_gids(2)
    path = group_file(tmp_path / "given.token", other, 0o600)
    assert load_or_create_token(str(path), group) == TOKEN
    assert (stat.S_IMODE(path.stat().st_mode), path.stat().st_gid) == (0o640, group)


def refuse_group_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a daemon user outside the group meets: the kernel refuses to give a file to that group."""
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    monkeypatch.setattr(os, "chown", refused)


@pytest.mark.parametrize("existing", [True, False])
def test_outside_the_group_the_token_file_is_one_line_and_no_leftover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       existing: bool) -> None:
    group = 40001
    directory = tmp_path / "tokens"
    directory.mkdir()
    path = private_file(directory / "given.token") if existing else directory / "new.token"
    refuse_group_changes(monkeypatch)
    with pytest.raises(ConfigError) as refused:
        load_or_create_token(str(path), group)
    assert str(refused.value) == (f"cannot give container token file {path} to group {group}: Operation not "
                                  "permitted (this user must be a member of that group)")
    assert os.listdir(directory) == (["given.token"] if existing else [])


def test_outside_the_group_the_token_directory_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "metadata-proxy"
    refuse_group_changes(monkeypatch)
    with pytest.raises(ConfigError) as refused:
        ensure_private_dir(str(directory), 40001)
    assert str(refused.value) == (f"cannot give token directory {directory} to group 40001: Operation not "
                                  "permitted (this user must be a member of that group)")
