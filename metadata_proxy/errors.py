"""What can stop a command, how it is told to the user (one line on stderr), and the exit status it gives.

The statuses let a supervisor tell a mistake that a restart could heal from one that only an operator can:
- 1 (EXIT_FAILURE): could not start for a reason that may pass (a port still taken, STS unreachable);
- 2 (EXIT_USAGE): a wrong flag, variable or config file;
- 4 (EXIT_PERMANENT): AWS refused for a reason only an operator can fix (AccessDenied, invalid or expired
  source credentials). systemd's RestartPreventExitStatus= names 2 and 4, so neither restarts forever.
"""

from __future__ import annotations

from metadata_proxy.logs import print_error

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PERMANENT = 4


class ConfigError(ValueError):
    """A setting the daemon cannot start with; the message names the setting and says what is accepted."""

    exit_status = EXIT_USAGE


class StartupError(Exception):
    """The daemon cannot start; the message is the one line the user sees."""

    exit_status = EXIT_FAILURE


class PermanentStartupError(StartupError):
    """AWS refused for a reason that retrying cannot heal."""

    exit_status = EXIT_PERMANENT


def report(error: ConfigError | StartupError) -> int:
    """Prints the one line and returns the exit status."""
    print_error(f"metadata-proxy: error: {error}")
    return error.exit_status
