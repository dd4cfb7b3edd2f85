"""The `metadata-proxy` command. Usage mistakes are one line on stderr and exit 2; start-up failures exit 1."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from metadata_proxy import __version__
from metadata_proxy.config import (
    DEFAULT_PORT,
    ConfigError,
    add_serve_arguments,
    load_serve_config,
    parse_host,
    parse_port,
)

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block on a mistake; a user needs the one line that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def build_parser() -> Parser:
    parser = Parser(prog="metadata-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"metadata-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    serve = commands.add_parser(
        "serve", help="serve a role's credentials on a local IMDSv2 endpoint",
        description="Assume a role and serve its credentials to local AWS clients through the EC2 instance "
                    "metadata protocol (IMDSv2). Every flag can also be set as METADATA_PROXY_<FLAG>.")
    add_serve_arguments(serve)
    demo = commands.add_parser(
        "demo", help="show the cross-account check offline, with moto playing AWS",
        description="Build the seed scenario's two accounts in moto (offline, IAM enforced), serve role-01 "
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
    return parser


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore and urllib3 log request headers at DEBUG, session tokens included: never let them through.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            config = load_serve_config(args, os.environ)
        except ConfigError as error:
            parser.error(str(error))
        setup_logging(config.log_level)
        from metadata_proxy.server import run_daemon  # aiohttp and boto3 load only when they are needed

        return run_daemon(config)
    if args.command == "healthcheck":
        try:
            url = args.url or local_endpoint(os.environ)
        except ValueError as error:
            parser.error(str(error))
        return healthcheck(url)
    setup_logging("warning")
    from metadata_proxy.demo import run_demo

    return run_demo(args.port, args.check)


def local_endpoint(environ: os._Environ[str]) -> str:
    """The serve settings' endpoint as seen from this host (a wildcard bind is reached on loopback)."""
    from metadata_proxy.server import endpoint_url

    host = parse_host(environ.get("METADATA_PROXY_HOST", "127.0.0.1"))
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    return endpoint_url(host, parse_port(environ.get("METADATA_PROXY_PORT", str(DEFAULT_PORT))))


def healthcheck(url: str) -> int:
    from metadata_proxy.healthcheck import check

    problem = check(url)
    if problem:
        print(f"metadata-proxy: unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0
