"""Flags and METADATA_PROXY_* variables: one table, validated once; a mistake is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metadata_proxy.cli_parser import build_parser
from metadata_proxy.config import ServeConfig, default_session_name, load_serve_config
from metadata_proxy.errors import ConfigError
from metadata_proxy.options import OPTIONS
from metadata_proxy.values import SESSION_NAME_RE as STS_SESSION_NAME

ARN = "arn:aws:iam::111111110001:role/role-01"


def config(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    return load_serve_config(build_parser().parse_args(["serve", *argv]), env or {})


def test_defaults() -> None:
    c = config(["--role-arn", ARN])
    (role,) = c.roles
    assert (c.host, role.port, role.duration_seconds, c.allow_imdsv1, c.allow_non_loopback) == \
        ("127.0.0.1", 9254, 3600, False, False)
    assert STS_SESSION_NAME.match(role.role_session_name) and role.role_session_name.startswith("metadata-proxy-")
    assert role.name == "role-01" and not c.container_credentials
    assert c.audit_interval == 60
    assert config(["--role-arn", ARN, "--audit-interval", "1"]).audit_interval == 1  # the shortest allowed


def test_every_flag_has_an_environment_equivalent_and_flags_win() -> None:
    assert {o.env for o in OPTIONS} >= {"METADATA_PROXY_ROLE_ARN", "METADATA_PROXY_PORT",
                                        "METADATA_PROXY_ALLOW_IMDSV1", "METADATA_PROXY_STS_ENDPOINT_URL"}
    env = {"METADATA_PROXY_ROLE_ARN": ARN, "METADATA_PROXY_PORT": "8000", "METADATA_PROXY_ALLOW_IMDSV1": "true",
           "METADATA_PROXY_EXTERNAL_ID": "from-env"}
    c = config(["--port", "9000"], env)
    (role,) = c.roles
    assert (role.role_arn, role.port, c.allow_imdsv1, role.external_id) == (ARN, 9000, True, "from-env")


def test_role_path_and_partitions_are_accepted() -> None:
    (role,) = config(["--role-arn", "arn:aws-us-gov:iam::123456789012:role/team/app/role-01"]).roles
    assert role.name == "role-01"


@pytest.mark.parametrize(("argv", "env", "names"), [
    (["--role-arn", "role-01"], {}, "--role-arn"),
    ([], {}, "--role-arn is required"),
    (["--role-arn", ARN, "--duration-seconds", "899"], {}, "--duration-seconds"),
    (["--role-arn", ARN, "--port", "70000"], {}, "--port"),
    (["--role-arn", ARN, "--session-policy", "/nonexistent/policy.json"], {}, "--session-policy"),
    (["--role-arn", ARN, "--name", "bad/name"], {}, "--name"),
    (["--role-arn", ARN, "--host", "example.com"], {}, "--host"),
    (["--role-arn", ARN, "--host", "10.0.0.1"], {}, "--allow-non-loopback"),
    (["--role-arn", ARN, "--role-session-name", "has space"], {}, "--role-session-name"),
    (["--role-arn", ARN, "--region", "Mars"], {}, "--region"),
    (["--role-arn", ARN, "--sts-endpoint-url", "sts.amazonaws.com"], {}, "--sts-endpoint-url"),
    (["--role-arn", ARN], {"METADATA_PROXY_ALLOW_IMDSV1": "maybe"}, "METADATA_PROXY_ALLOW_IMDSV1"),
    (["--role-arn", ARN], {"METADATA_PROXY_LOG_LEVEL": "loud"}, "METADATA_PROXY_LOG_LEVEL"),
    (["--role-arn", ARN, "--container-token-group", "no-such-group-here"], {}, "--container-token-group"),
    (["--role-arn", ARN, "--audit-interval", "0"], {}, "--audit-interval"),
    (["--role-arn", ARN, "--audit-interval", "86401"], {}, "--audit-interval"),
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


# --- the TOML config file ---

def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_config_file_with_several_roles_and_shared_defaults(tmp_path) -> None:
    (tmp_path / "policy.json").write_text('{"Version": "2012-10-17", "Statement": []}')
    path = write(tmp_path, f'''
host = "::1"
duration_seconds = 1800
container_credentials = true
session_policy = "policy.json"

[[role]]
role_arn = "{ARN}"
port = 9301

[[role]]
name = "other"
role_arn = "arn:aws:iam::111111110001:role/team/role-09"
port = 9302
duration_seconds = 900
external_id = "ext-1"
''')
    c = config(["--config", path])
    assert c.host == "::1" and c.container_credentials and c.config_path == path
    first, second = c.roles
    assert (first.name, first.port, first.duration_seconds) == ("role-01", 9301, 1800)
    assert (second.name, second.port, second.duration_seconds, second.external_id) == ("other", 9302, 900, "ext-1")
    assert first.session_policy == second.session_policy == '{"Version":"2012-10-17","Statement":[]}'


def test_container_token_group_by_name_or_gid_from_flag_variable_or_file(tmp_path) -> None:
    assert config(["--role-arn", ARN, "--container-token-group", "root"]).container_token_group == 0
    assert config(["--role-arn", ARN], {"METADATA_PROXY_CONTAINER_TOKEN_GROUP": "10100"}).container_token_group == 10100
    path = write(tmp_path, f'role_arn = "{ARN}"\ncontainer_token_group = "10101"\n')
    assert config(["--config", path]).container_token_group == 10101
    assert config(["--role-arn", ARN]).container_token_group is None


def test_flags_and_env_win_over_the_file(tmp_path) -> None:
    path = write(tmp_path, f'role_arn = "{ARN}"\nport = 9400\nregion = "eu-west-1"\nallow_imdsv1 = true\n')
    c = config(["--port", "9401"], {"METADATA_PROXY_CONFIG": path, "METADATA_PROXY_REGION": "eu-north-1"})
    assert (c.roles[0].port, c.region, c.allow_imdsv1) == (9401, "eu-north-1", True)


@pytest.mark.parametrize(("text", "argv", "message"), [
    ('role_arn = "{ARN}"\nbogus = 1\n', [], "unknown key 'bogus'"),
    ('[[role]]\nrole_arn = "{ARN}"\nprot = 1\n', [], r"role\[1\]: unknown key 'prot'"),
    ('role_arn = "{ARN}"\nport = "9254"\n', [], "port: expected a whole number"),
    ('role_arn = "{ARN}"\nallow_imdsv1 = "yes"\n', [], "allow_imdsv1: expected true or false"),
    ('role_arn = "{ARN}"\nduration_seconds = 10\n', [], "duration_seconds: expected seconds from 900"),
    ('[[role]]\nport = 1\n', [], r"role\[1\]: role_arn is required"),
    ('region = "us-east-1"\n', [], "role_arn in a config file"),
    ('role_arn = "{ARN}"\nport = \n', [], "not valid TOML"),
    ('[[role]]\nrole_arn = "{ARN}"\nport = 1\n[[role]]\nrole_arn = "{ARN}"\nport = 1\n', [], "both named"),
    ('[[role]]\nrole_arn = "{ARN}"\nport = 1\n[[role]]\nname = "b"\nrole_arn = "{ARN}"\nport = 1\n', [],
     "both use port 1"),
    ('[[role]]\nrole_arn = "{ARN}"\n', ["--port", "1"], "--port describes a single role"),
    ('role = "x"\nrole_arn = "{ARN}"\n', [], r"\[\[role\]\] tables"),
])
def test_config_file_mistakes_name_the_key(tmp_path, text: str, argv: list[str], message: str) -> None:
    path = write(tmp_path, text.replace("{ARN}", ARN))
    with pytest.raises(ConfigError, match=message):
        config(["--config", path, *argv])


def test_unreadable_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*: No such file"):
        config(["--config", str(tmp_path / "missing.toml")])


@pytest.mark.parametrize("text", ['role_arn = "{ARN}"\nbogus = 1\n', 'port = "x"\n', "region = 1\n", "[[role]]\n",
                                  'region = "us-east-1"\n', None])
def test_config_mistakes_are_one_line_and_exit_2_before_anything_starts(tmp_path, text: str | None) -> None:
    """Unknown key, wrong types, a role without role_arn, no role at all, an unreadable (missing) file."""
    path = write(tmp_path, text.replace("{ARN}", ARN)) if text is not None else str(tmp_path / "missing.toml")
    result = subprocess.run([sys.executable, "-m", "metadata_proxy", "serve", "--config", path],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true"})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("metadata-proxy: error:") and (path in line or "role_arn" in line)
