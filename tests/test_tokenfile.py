"""The container endpoint's token file: created private, and an operator's file trusted only if it is private.

A token file that another local user could have written, or could read, or that is a link to somewhere else,
would hand that user the role: refused with one line, as ssh's StrictModes refuses key files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from metadata_proxy.errors import ConfigError
from metadata_proxy.tokenfile import ensure_private_dir, load_or_create_token

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
