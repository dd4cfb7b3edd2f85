"""The command line's grammar: every subcommand and its flags, and one-line usage errors."""

from __future__ import annotations

import argparse
from typing import NoReturn

from metadata_proxy import __version__
from metadata_proxy.addresses import DEFAULT_PORT
from metadata_proxy.errors import EXIT_USAGE
from metadata_proxy.logs import print_error
from metadata_proxy.options import DEFAULT_CONFIG, add_serve_arguments

DESCRIPTION = ("Give the programs on a host a different AWS identity than the host's own: serve an assumed "
               "role's credentials through the EC2 instance metadata and container-credentials protocols.")


class Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block on a mistake; a user needs the one line that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{self.prog}: error: {message} (see --help)")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> Parser:
    parser = Parser(prog="metadata-proxy", description=DESCRIPTION)
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
