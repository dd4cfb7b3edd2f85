"""`metadata-proxy exec -- COMMAND`: the usual "assume role-01 and run a command" helper, done better.

Instead of static keys in the child's environment (which die with the session, an hour at most with role
chaining), the child gets a private loopback container-credentials endpoint with a one-off token: its SDK
fetches, and re-fetches, credentials that the refresher keeps valid for as long as the child runs. The
child's exit status becomes ours, and SIGTERM/SIGHUP/SIGINT reach it. `--env` instead prints export lines
with one session's static keys, for a shell.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import boto3

from metadata_proxy.clock import Clock
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.daemon import Daemon
from metadata_proxy.errors import ConfigError, PermanentStartupError, StartupError, report
from metadata_proxy.listeners import Listener
from metadata_proxy.model import RoleSpec, format_time, region_of
from metadata_proxy.notify import Notifier
from metadata_proxy.source import NoSourceCredentials, source_session
from metadata_proxy.sts import AssumeRoleClient, StsError

# Variables that would win over the container provider in some SDK's chain, or point it elsewhere; and
# systemd's, which belong to the service that ran us, not to the command.
SHADOWING = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_CREDENTIAL_EXPIRATION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
             "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_AUTHORIZATION_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class CommandNotStarted(StartupError):
    """The command could not be run; exit_status is what a shell reports (127 not found, 126 not executable)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def only_role(config: ServeConfig) -> RoleConfig:
    if len(config.roles) != 1:
        raise ConfigError(f"exec runs a command as one role, but the configuration names {len(config.roles)}")
    return config.roles[0]


def child_environment(environ: Mapping[str, str], listener: Listener, region: str) -> dict[str, str]:
    """Our environment, minus every credential source that precedes the container provider in some SDK's
    chain (config and credential files included: a default profile with keys would win), plus the endpoint."""
    env = {k: v for k, v in environ.items() if k not in SHADOWING}
    env.update(dict(listener.exports[1:]))
    env.update(AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
    env.setdefault("AWS_REGION", region)
    env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    return env


def terminal_sends_sigint_to_child() -> bool:
    """Ctrl-C goes to the whole foreground process group, the child included: forwarding it would double it."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


async def run_exec(config: ServeConfig, command: Sequence[str], clock: Clock | None = None,
                   started: Callable[[Daemon], None] = lambda daemon: None) -> int:
    """started(daemon) is called once the command runs (tests watch the refresher through it)."""
    """Serves the role on a private endpoint while the command runs; returns the command's exit status."""
    role = only_role(config)
    private = tempfile.mkdtemp(prefix="metadata-proxy-exec-")  # 0700, and removed at the end
    try:
        role = replace(role, port=0, container_token_file=os.path.join(private, "token"))
        # The role's settings only: none of a service's listeners (admin port, allow-list, hop limit) nor its
        # systemd plumbing, so exec works next to the running service with the same configuration file.
        private_config = replace(config, roles=(role,), host="127.0.0.1", container_credentials=True,
                                 admin_port=None, hop_limit=None, allow_uid=(os.geteuid(),), allow_user=(),
                                 container_token_group=None)
        daemon = Daemon(private_config, clock, notifier=Notifier({}))
        serving = await daemon.start_in_background()
        try:
            return await _run_child(daemon, command, started)
        finally:
            daemon.request_stop()
            await serving
    finally:
        shutil.rmtree(private, ignore_errors=True)


async def _run_child(daemon: Daemon, command: Sequence[str], started: Callable[[Daemon], None]) -> int:
    listener = daemon.listeners[0]
    assert listener.spec is not None
    env = child_environment(os.environ, listener, listener.spec.region)
    try:
        process = await asyncio.create_subprocess_exec(*command, env=env)
    except FileNotFoundError:
        raise CommandNotStarted(f"command not found: {command[0]}", 127) from None
    except PermissionError:
        raise CommandNotStarted(f"command not executable: {command[0]}", 126) from None
    loop = asyncio.get_running_loop()
    forwarded = [s for s in FORWARDED if not (s == signal.SIGINT and terminal_sends_sigint_to_child())]
    for signum in FORWARDED:
        if signum in forwarded:
            loop.add_signal_handler(signum, process.send_signal, signum)
        else:
            loop.add_signal_handler(signum, lambda: None)  # the child got it from the terminal already
    started(daemon)
    try:
        code = await process.wait()
    finally:
        for signum in FORWARDED:
            loop.remove_signal_handler(signum)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as shells report it


def print_env(config: ServeConfig) -> int:
    """--env: one AssumeRole, printed as export lines with the expiry (no refresh: they last one session)."""
    role = only_role(config)
    try:
        session: boto3.Session = source_session()
    except NoSourceCredentials as error:
        raise StartupError(str(error)) from None
    region = region_of(config.region, session.region_name)
    spec = RoleSpec.of(role, config.sts_endpoint_url, region)
    try:
        creds = AssumeRoleClient(session).assume(spec)
    except StsError as error:
        raise PermanentStartupError(f"AssumeRole of {error.role_arn} failed: {error}; {error.hint}") from None
    print(f"export AWS_ACCESS_KEY_ID={creds.access_key_id}")
    print(f"export AWS_SECRET_ACCESS_KEY={creds.secret_access_key}")
    print(f"export AWS_SESSION_TOKEN={creds.session_token}")
    print(f"export AWS_REGION={region}")
    print(f"export AWS_DEFAULT_REGION={region}")  # what AWS CLI v1 reads
    print(f"# {creds.assumed_role_arn}: expires {format_time(creds.expiration)} "
          f"(in {int(creds.lifetime // 60)} minutes); run again to renew")
    return 0


def exec_main(config: ServeConfig, command: Sequence[str], env_only: bool) -> int:
    try:
        if env_only:
            return print_env(config)
        return asyncio.run(run_exec(config, command))
    except (ConfigError, StartupError) as error:
        return report(error)
