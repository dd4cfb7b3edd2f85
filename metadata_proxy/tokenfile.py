"""The container endpoint's token file: where it lives, and the checks it must pass before it is trusted.

A consumer proves itself to the container-credentials endpoint with the token in this file, so whoever can
read or replace the file gets the role. An existing file is trusted only if this user owns it, no other user
can read or write it, and it is not a symbolic link (opened with O_NOFOLLOW), as ssh's StrictModes judges key
files; otherwise another local user could plant a file, or a link to one of theirs, in a shared directory and
know the token. A new token is written with mode 0600 and without a trailing newline (botocore rejects one).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping

from metadata_proxy.errors import ConfigError

MIN_TOKEN_LENGTH = 16


def default_token_dir(environ: Mapping[str, str]) -> str:
    """systemd's RuntimeDirectory, the user's runtime dir, /run for root, else a private dir in /tmp."""
    if environ.get("RUNTIME_DIRECTORY"):
        return environ["RUNTIME_DIRECTORY"].split(":")[0]
    if environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(environ["XDG_RUNTIME_DIR"], "metadata-proxy")
    if os.geteuid() == 0:
        return "/run/metadata-proxy"
    return os.path.join(tempfile.gettempdir(), f"metadata-proxy-{os.geteuid()}")


def ensure_private_dir(path: str) -> None:
    """Creates path as 0700, or accepts it if it is ours and not open to others (no symlink games in /tmp)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as error:
        raise ConfigError(f"cannot use {path} as the token directory: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"cannot use {path} as the token directory: it is not a directory")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ConfigError(f"token directory {path} must be owned by this user and not writable by others")


def check_token(token: str, source: str) -> str:
    if token != token.strip() or any(ch in token for ch in "\r\n"):
        raise ConfigError(f"{source}: the token has surrounding whitespace or a newline; clients send it "
                          "verbatim and botocore rejects it: write it without one (printf %s TOKEN > FILE)")
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        raise ConfigError(f"{source}: the token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters")
    return token


def _read_trusted(path: str) -> bytes | None:
    """The file's bytes if it passes the checks, None if there is no file; ConfigError otherwise."""
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
        if info.st_mode & 0o077:
            raise ConfigError(f"refusing container token file {path}: other users may access it "
                              f"(mode {stat.S_IMODE(info.st_mode):04o}; chmod 600 it)")
        return file.read(4096)


def load_or_create_token(path: str) -> str:
    """The token in path; if there is no such file, a new random one written there with mode 0600."""
    raw = _read_trusted(path)
    if raw is not None:
        try:
            return check_token(raw.decode("ascii"), path)
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: the token must be printable ASCII") from None
    token = secrets.token_urlsafe(32)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".token-")  # mode 0600, O_EXCL
        with os.fdopen(fd, "w") as file:
            file.write(token)
        os.replace(temporary, path)
    except OSError as error:
        raise ConfigError(f"cannot write container token file {path}: {error.strerror}") from None
    return token
