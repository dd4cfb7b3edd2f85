"""Flags and METADATA_PROXY_* variables: one table, validated once; a mistake is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metadata_proxy.cli import build_parser
from metadata_proxy.config import OPTIONS, ConfigError, ServeConfig, build_serve_config, default_session_name
from metadata_proxy.config import SESSION_NAME_RE as STS_SESSION_NAME

ARN = "arn:aws:iam::111111110001:role/role-01"


def config(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    return build_serve_config(build_parser().parse_args(["serve", *argv]), env or {})


def test_defaults() -> None:
    c = config(["--role-arn", ARN])
    assert (c.host, c.port, c.duration_seconds, c.allow_imdsv1, c.allow_non_loopback) == \
        ("127.0.0.1", 9254, 3600, False, False)
    assert STS_SESSION_NAME.match(c.role_session_name) and c.role_session_name.startswith("metadata-proxy-")


def test_every_flag_has_an_environment_equivalent_and_flags_win() -> None:
    assert {o.env for o in OPTIONS} >= {"METADATA_PROXY_ROLE_ARN", "METADATA_PROXY_PORT",
                                        "METADATA_PROXY_ALLOW_IMDSV1", "METADATA_PROXY_STS_ENDPOINT_URL"}
    env = {"METADATA_PROXY_ROLE_ARN": ARN, "METADATA_PROXY_PORT": "8000", "METADATA_PROXY_ALLOW_IMDSV1": "true",
           "METADATA_PROXY_EXTERNAL_ID": "from-env"}
    c = config(["--port", "9000"], env)
    assert (c.role_arn, c.port, c.allow_imdsv1, c.external_id) == (ARN, 9000, True, "from-env")


def test_role_path_and_partitions_are_accepted() -> None:
    assert config(["--role-arn", "arn:aws-us-gov:iam::123456789012:role/team/app/role-01"]).role_arn


@pytest.mark.parametrize(("argv", "env", "names"), [
    (["--role-arn", "role-01"], {}, "--role-arn"),
    ([], {}, "--role-arn is required"),
    (["--role-arn", ARN, "--duration-seconds", "899"], {}, "--duration-seconds"),
    (["--role-arn", ARN, "--port", "70000"], {}, "--port"),
    (["--role-arn", ARN, "--host", "example.com"], {}, "--host"),
    (["--role-arn", ARN, "--host", "10.0.0.1"], {}, "--allow-non-loopback"),
    (["--role-arn", ARN, "--role-session-name", "has space"], {}, "--role-session-name"),
    (["--role-arn", ARN, "--region", "Mars"], {}, "--region"),
    (["--role-arn", ARN, "--sts-endpoint-url", "sts.amazonaws.com"], {}, "--sts-endpoint-url"),
    (["--role-arn", ARN], {"METADATA_PROXY_ALLOW_IMDSV1": "maybe"}, "METADATA_PROXY_ALLOW_IMDSV1"),
    (["--role-arn", ARN], {"METADATA_PROXY_LOG_LEVEL": "loud"}, "METADATA_PROXY_LOG_LEVEL"),
])
def test_bad_values_name_the_setting(argv: list[str], env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("-", r"\-")):
        config(argv, env)


def test_default_session_name_is_valid_for_sts() -> None:
    for host in ("ip-10-0-0-1.ec2.internal", "x" * 200, "bad host!name", ""):
        assert STS_SESSION_NAME.match(default_session_name(host))


@pytest.mark.parametrize("argv", [
    ["serve", "--bogus"],
    ["serve", "--role-arn", ARN, "--duration-seconds", "many"],
    ["serve"],
    ["launch"],
    [],
])
def test_cli_mistakes_are_one_line_and_exit_2(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "metadata_proxy", *argv], capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true"})
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("metadata-proxy") and "error:" in line
