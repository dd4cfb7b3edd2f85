"""The `metadata-proxy` command: what each subcommand does with its parsed arguments (cli_parser.py declares
them). Usage mistakes are one line on stderr and exit 2; the other statuses are in errors.py."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from metadata_proxy.addresses import DEFAULT_PORT, endpoint_url, reachable_host
from metadata_proxy.cli_parser import Parser, build_parser
from metadata_proxy.config import ServeConfig, load_serve_config
from metadata_proxy.errors import EXIT_OK, ConfigError, report
from metadata_proxy.logs import setup_logging
from metadata_proxy.values import parse_account, parse_bucket, parse_host, parse_name, parse_port


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](parser, args)
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling: no traceback
        print("metadata-proxy: interrupted", file=sys.stderr)
        return 130


def stop_quietly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def serve_config(parser: Parser, args: argparse.Namespace) -> ServeConfig:
    try:
        return load_serve_config(args, os.environ)
    except ConfigError as error:
        parser.error(str(error))


def run_serve(parser: Parser, args: argparse.Namespace) -> int:
    # Until the event loop takes the signals over: a reload request cannot end the process (SIGHUP's default
    # action), and a stop ends it at once with status 0 and no traceback, whatever is being imported.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_quietly)
    config = serve_config(parser, args)
    setup_logging(config.log_level, config.log_format)
    from metadata_proxy.runner import run_daemon  # aiohttp and boto3 load only for the commands that need them

    return run_daemon(config, load_config=lambda: load_serve_config(args, os.environ))


def run_check_config(parser: Parser, args: argparse.Namespace) -> int:
    try:
        load_serve_config(args, os.environ)
    except ConfigError as error:
        return report(error)
    return EXIT_OK


def run_demo(parser: Parser, args: argparse.Namespace) -> int:
    setup_logging("warning")
    from metadata_proxy.demo import run_demo

    return run_demo(args.port, args.check)


def run_healthcheck(parser: Parser, args: argparse.Namespace) -> int:
    try:
        url = args.url or local_endpoint(os.environ)
    except ValueError as error:
        parser.error(str(error))
    from metadata_proxy.healthcheck import check

    problem = check(url)
    if problem:
        print(f"metadata-proxy: unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


def run_credential_process(parser: Parser, args: argparse.Namespace) -> int:
    from metadata_proxy.credential_process import credentials_json, resolve
    from metadata_proxy.imds_client import EndpointError
    from metadata_proxy.values import parse_url

    url = checked(parser, "url", parse_url, args.url)
    role = checked(parser, "role", parse_name, args.role)
    try:
        target = resolve(url, role, args.config, os.environ, local_endpoint(os.environ))
    except (ConfigError, ValueError) as error:  # ValueError: METADATA_PROXY_HOST or _PORT is not one
        parser.error(str(error))
    try:
        print(credentials_json(target))
    except EndpointError as error:  # the SDK shows this line to the user: it never holds a secret
        print(f"metadata-proxy credential-process: {error}", file=sys.stderr)
        return 1
    return 0


def run_exec(parser: Parser, args: argparse.Namespace) -> int:
    command = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    if args.env == bool(command):
        parser.error("give either --env or -- COMMAND [ARGS...]")
    config = serve_config(parser, args)
    setup_logging("warning" if config.log_level == "info" else config.log_level)  # the child's output matters
    from metadata_proxy.exec import exec_main

    return exec_main(config, command, args.env)


def run_policies(parser: Parser, args: argparse.Namespace) -> int:
    from metadata_proxy.policies import PLACEHOLDER_ACCOUNT, CrossAccountSetup
    from metadata_proxy.values import parse_external_id, parse_role_arn

    setup = CrossAccountSetup(
        trusting_role_name=checked(parser, "trusting-role-name", parse_name, args.trusting_role_name),
        trusting_account=(checked(parser, "trusting-account", parse_account, args.trusting_account)
                          or PLACEHOLDER_ACCOUNT),
        trusted_role_arn=checked(parser, "trusted-role-arn", parse_role_arn, args.trusted_role_arn),
        bucket=checked(parser, "bucket", parse_bucket, args.bucket),
        external_id=checked(parser, "external-id", parse_external_id, args.external_id), broad=args.broad)
    if not args.trusting_account:
        print(f"# --trusting-account not given: replace {PLACEHOLDER_ACCOUNT} with the bucket owner's account id",
              file=sys.stderr)
    print(setup.as_json() if args.format == "json" else setup.as_cli())
    return 0


def run_doctor(parser: Parser, args: argparse.Namespace) -> int:
    config = serve_config(parser, args)
    setup_logging("warning")
    from metadata_proxy.doctor import run_doctor

    return run_doctor(config, args.bucket, args.s3_endpoint_url, args.url)


def checked(parser: Parser, flag: str, parse: Callable[[str], str], value: str | None) -> str | None:
    """A flag's value through its parser; a wrong one is the usual one line and exit 2."""
    try:
        return None if value is None else parse(value)
    except ValueError as error:
        parser.error(f"--{flag}: {error} (got {value!r})")


def run_intercept(parser: Parser, args: argparse.Namespace) -> int:
    from metadata_proxy import intercept

    script = intercept.removal()
    if args.action == "install":
        config = serve_config(parser, args)
        if not config.intercepting:
            parser.error("nothing to intercept: give --intercept-user or --intercept-group (or intercept_users or "
                         "intercept_groups in the config file)")
        script = intercept.ruleset(config.intercept_users, config.intercept_groups, config.intercept_port)
    return intercept.command(script)


COMMANDS = {"serve": run_serve, "check-config": run_check_config, "demo": run_demo, "healthcheck": run_healthcheck,
            "exec": run_exec, "policies": run_policies, "doctor": run_doctor,
            "credential-process": run_credential_process, "intercept": run_intercept}


def local_endpoint(environ: os._Environ[str]) -> str:
    """The serve settings' endpoint as seen from this host."""
    host = parse_host(environ.get("METADATA_PROXY_HOST", "127.0.0.1"))
    return endpoint_url(reachable_host(host), parse_port(environ.get("METADATA_PROXY_PORT", str(DEFAULT_PORT))))
