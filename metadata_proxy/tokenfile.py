"""The container endpoint's token file: where it lives, and the checks it must pass before it is trusted.

A consumer proves itself to the container-credentials endpoint with the token in this file, so whoever can
read or replace the file gets the role. An existing file is trusted only if this user owns it, no other user
can read or write it, and it is not a symbolic link (opened with O_NOFOLLOW), as ssh's StrictModes judges key
files; otherwise another local user could plant a file, or a link to one of theirs, in a shared directory and
know the token. A new token is written with mode 0600 and without a trailing newline (botocore rejects one).

With a token group (--container-token-group), consumers running as other users in that group may read the
file: it gets that group and mode 0640, and an existing file may be group-readable by exactly that group (any
other group, or any access for others, is still refused). Its directory must then let the group through.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping

from metadata_proxy.errors import ConfigError

log = logging.getLogger("metadata_proxy")

MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 4096  # far beyond any real token; a longer file is refused rather than cut short


def default_token_dir(environ: Mapping[str, str]) -> str:
    """systemd's RuntimeDirectory, the user's runtime dir, /run for root, else a private dir in /tmp."""
    if environ.get("RUNTIME_DIRECTORY"):
        return environ["RUNTIME_DIRECTORY"].split(":")[0]
    if environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(environ["XDG_RUNTIME_DIR"], "metadata-proxy")
    if os.geteuid() == 0:
        return "/run/metadata-proxy"
    return os.path.join(tempfile.gettempdir(), f"metadata-proxy-{os.geteuid()}")


def ensure_private_dir(path: str, group: int | None = None) -> None:
    """Creates path as 0700, or accepts it if it is ours and not open to others (no symlink games in /tmp).
    With a token group, the group may pass through it (let_group_through)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as error:
        raise ConfigError(f"cannot use {path} as the token directory: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"cannot use {path} as the token directory: it is not a directory")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ConfigError(f"token directory {path} must be owned by this user and not writable by others")
    if group is not None:
        let_group_through(path, group)


def group_may_pass(info: os.stat_result, group: int) -> bool:
    """Whether a member of group (not the owner) may traverse the directory: the kernel applies the group
    bits to a member of the directory's group, and the other bits to everyone else."""
    return bool(info.st_mode & (0o010 if info.st_gid == group else 0o001))


def let_group_through(path: str, group: int) -> None:
    """Makes our token directory 0710 with the token group if that group cannot pass through it yet: a
    consumer must traverse the directory (x) to open the file inside it, but need not list it (r), and must
    not be able to add or replace files there (w). 0700 would stop every consumer with "Permission denied"."""
    try:
        if group_may_pass(os.lstat(path), group):
            return
        os.chown(path, -1, group, follow_symlinks=False)
        os.chmod(path, 0o710, follow_symlinks=False)
    except OSError as error:
        raise ConfigError(f"cannot give token directory {path} to group {group}: {error.strerror} "
                          "(this user must be a member of that group)") from None


def check_token(token: str, source: str) -> str:
    if token != token.strip() or any(ch in token for ch in "\r\n"):
        raise ConfigError(f"{source}: the token has surrounding whitespace or a newline; clients send it "
                          "verbatim and botocore rejects it: write it without one (printf %s TOKEN > FILE)")
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        raise ConfigError(f"{source}: the token must be {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} printable ASCII "
                          "characters")
    return token


def _read_trusted(path: str, group: int | None) -> bytes | None:
    """The file's bytes if it passes the checks, None if there is no file; ConfigError otherwise. With a
    token group, a private file is given to that group (the operator asked for it to read the token)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError(f"refusing container token file {path}: it is a symbolic link") from None
        raise ConfigError(f"cannot read container token file {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"refusing container token file {path}: it is not a regular file")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"refusing container token file {path}: it is owned by uid {info.st_uid}, "
                              f"not by this user (uid {os.geteuid()})")
        mode = stat.S_IMODE(info.st_mode)
        if group is None and mode & 0o077:
            raise ConfigError(f"refusing container token file {path}: other users may access it "
                              f"(mode {mode:04o}; chmod 600 it)")
        if group is not None and (mode & 0o037 or (mode & 0o040 and info.st_gid != group)):
            raise ConfigError(f"refusing container token file {path}: users other than its owner and group "
                              f"{group} may access it (mode {mode:04o}, group {info.st_gid}; chmod 640 it and "
                              f"chgrp {group} it)")
        if group is not None:
            _share_with(fd, path, group)
        return file.read(MAX_TOKEN_LENGTH + 1)  # enough to tell a token that is too long


def _share_with(fd: int, path: str, group: int) -> None:
    """The token file's group becomes group, with read access (0640), through the open file: no race."""
    try:
        os.fchown(fd, -1, group)
        os.fchmod(fd, 0o640)
    except OSError as error:
        raise ConfigError(f"cannot give container token file {path} to group {group}: {error.strerror} "
                          "(this user must be a member of that group)") from None


def load_or_create_token(path: str, group: int | None = None) -> str:
    """The token in path; if there is no such file, a new random one written there with mode 0600 (0640 and
    the group, with a token group)."""
    raw = _read_trusted(path, group)
    if raw is not None:
        try:
            return check_token(raw.decode("ascii"), path)
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: the token must be printable ASCII") from None
    token = secrets.token_urlsafe(32)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        created = not os.path.isdir(directory)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".token-")  # mode 0600, O_EXCL
        try:
            with os.fdopen(fd, "w") as file:
                if group is not None:
                    _share_with(fd, path, group)
                file.write(token)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as error:
        raise ConfigError(f"cannot write container token file {path}: {error.strerror}") from None
    if group is not None:
        _check_reachable(directory, group, created)
    return token


def _check_reachable(directory: str, group: int, created: bool) -> None:
    """A directory made here is ours to open to the group; an operator's is only checked, with a warning."""
    if created:
        let_group_through(directory, group)
    elif not group_may_pass(os.stat(directory), group):
        log.warning("group %d cannot pass through %s to read the container token file in it: give it x "
                    "(chgrp %d and chmod g+x, or o+x)", group, directory, group)
