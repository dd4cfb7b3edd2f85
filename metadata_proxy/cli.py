"""The `metadata-proxy` command. Usage mistakes are one line on stderr and exit 2; start-up failures exit 1."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from metadata_proxy import __version__
from metadata_proxy.addresses import DEFAULT_PORT, endpoint_url, reachable_host
from metadata_proxy.config import ServeConfig, load_serve_config
from metadata_proxy.errors import EXIT_OK, EXIT_USAGE, ConfigError, report
from metadata_proxy.logs import print_error, setup_logging
from metadata_proxy.options import DEFAULT_CONFIG, add_serve_arguments
from metadata_proxy.values import parse_account, parse_bucket, parse_host, parse_name, parse_port


class Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block on a mistake; a user needs the one line that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{self.prog}: error: {message} (see --help)")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> Parser:
    parser = Parser(prog="metadata-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"metadata-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    serve = commands.add_parser(
        "serve", help="serve a role's credentials on a local IMDSv2 endpoint",
        description="Assume a role and serve its credentials to local AWS clients through the EC2 instance "
                    "metadata protocol (IMDSv2). Every flag can also be set as METADATA_PROXY_<FLAG>.")
    add_serve_arguments(serve)
    check = commands.add_parser(
        "check-config", help="validate the configuration as serve would load it, without calling AWS",
        description="Load the configuration exactly as serve would (flags, METADATA_PROXY_* variables, the config "
                    "file) and exit 0 if serve would accept it, else print the one-line reason and exit 2. "
                    "Calls no AWS API, so a role that is valid but not assumable still passes. The service's "
                    "ExecReload= runs it before the reload signal, so `systemctl reload` fails on a bad file.")
    add_serve_arguments(check)
    demo = commands.add_parser(
        "demo", help="show the cross-account check offline, with moto playing AWS",
        description="Build the two-account cross-account scenario in moto (offline, IAM enforced), serve role-01 "
                    "with role-02's credentials as source, and show the check: AccessDenied as role-02, the "
                    "bucket listing through metadata-proxy. Then keep serving until Ctrl-C.")
    demo.add_argument("--check", action="store_true", help="exit after the check: 0 if both outcomes were right")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    health = commands.add_parser(
        "healthcheck", help="exit 0 if a running daemon serves valid credentials (for container health checks)",
        description="Ask a running daemon for credentials the way an SDK does; exit 0 if it serves valid "
                    "ones, else print why and exit 1.")
    health.add_argument("--url", default=None,
                        help="the daemon's endpoint (default http://HOST:PORT/ from METADATA_PROXY_HOST and "
                             f"METADATA_PROXY_PORT, else http://127.0.0.1:{DEFAULT_PORT}/)")
    process = commands.add_parser(
        "credential-process", help="print a running daemon's credentials for a credential_process profile",
        description="Print the credentials a running daemon serves, as the JSON of a credential_process line in "
                    "~/.aws/config: credential_process = metadata-proxy credential-process. Without --url it reads "
                    "the daemon's settings (config file, METADATA_PROXY_* variables) and asks the role's container "
                    "endpoint when this user can read its token file, IMDS otherwise; without settings, "
                    f"IMDS at http://127.0.0.1:{DEFAULT_PORT}/. Exit 1 with one line on stderr when it gets none.")
    process.add_argument("--url", default=None, help="ask IMDS at this endpoint, e.g. http://127.0.0.1:9255/")
    process.add_argument("--role", metavar="NAME", default=None,
                         help="the role to ask for, by its name (for a daemon serving several roles)")
    process.add_argument("--config", metavar="PATH", default=None,
                         help=f"the daemon's config file (default {DEFAULT_CONFIG} if it exists)")
    execute = commands.add_parser(
        "exec", help="run a command as the role (credentials stay valid for as long as it runs)",
        usage="metadata-proxy exec [--role-arn ARN | --config PATH] [options] [--env | -- COMMAND [ARGS...]]",
        description="Run COMMAND with the role's identity, served to it over a private loopback "
                    "container-credentials endpoint with a one-off token, refreshed for as long as it runs. "
                    "Its exit status becomes ours; SIGTERM, SIGHUP and SIGINT are passed on. Takes the flags of "
                    "serve (the listener ones are ignored).")
    add_serve_arguments(execute)
    execute.add_argument("--env", action="store_true",
                         help="print export lines with one session's static keys instead of running a command")
    execute.add_argument("command_args", nargs=argparse.REMAINDER, metavar="COMMAND",
                         help="the command and its arguments, after --")
    policies = commands.add_parser(
        "policies", help="print the IAM documents for cross-account access to a bucket",
        description="Print the IAM documents of cross-account access for your accounts: the trusting role's "
                    "trust policy and policy-01 (least privilege on the bucket unless --broad), the trusted "
                    "role's EC2 trust policy and policy-02; with --format cli, the aws iam commands that apply them.")
    policies.add_argument("--trusted-role-arn", required=True, metavar="ARN",
                          help="the role whose credentials the daemon starts from (role-02, the instance's role)")
    policies.add_argument("--bucket", required=True, help="the bucket role-01 may read")
    policies.add_argument("--trusting-account", metavar="ID", default=None,
                          help="account that owns the bucket and role-01 (placeholder if not given)")
    policies.add_argument("--trusting-role-name", metavar="NAME", default="role-01",
                          help="name of the role to create there (default role-01)")
    policies.add_argument("--external-id", metavar="ID", default=None,
                          help="require this ExternalId in role-01's trust policy")
    policies.add_argument("--broad", action="store_true",
                          help="the broad s3:Get*/s3:List* on * instead of ListBucket + GetObject on the bucket")
    policies.add_argument("--format", choices=("json", "cli"), default="json")
    doctor = commands.add_parser(
        "doctor", help="check a live setup step by step and say what to fix",
        description="Check the source identity, AssumeRole of each configured role, the assumed identity, "
                    "optionally listing a bucket, and a running daemon; print a table with the fix for each "
                    "failure. Exit 0 only when all pass. Takes the flags of serve.")
    add_serve_arguments(doctor)
    doctor.add_argument("--bucket", default=None, help="also list this bucket with the assumed role")
    doctor.add_argument("--s3-endpoint-url", metavar="URL", default=None, help="S3 endpoint (default the region's)")
    doctor.add_argument("--url", default=None, help="the running daemon's endpoint (default: from the config)")
    intercept = commands.add_parser(
        "intercept", help="write or remove the rules of transparent mode (needs CAP_NET_ADMIN: run as root)",
        description="Write (install) or delete (remove) the nftables rules that send the intercept users' "
                    "connections to 169.254.169.254:80 to the daemon's transparent endpoint, for a daemon that "
                    "runs without the privilege to write them itself. remove also cleans up after a killed daemon.")
    actions = intercept.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    install = actions.add_parser("install", help="replace the rules with the ones the configuration asks for",
                                 description="Replace the table inet metadata_proxy with the rules of the "
                                             "configuration (intercept_users, intercept_groups, intercept_port). "
                                             "Takes the flags of serve.")
    add_serve_arguments(install)
    actions.add_parser("remove", help="delete the rules (nothing to do if there are none)",
                       description="Delete the table inet metadata_proxy; intercepted users reach the real "
                                   "instance metadata service again.")
    return parser


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
