"""Which credential sources win over the endpoint for a client, as doctor reports them: each one found, with
how to remove it, and the near misses that must not be reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from metadata_proxy.client_chain import Winner, winning_sources

OWN = "http://127.0.0.1:9254/v1/credentials/app"


def environment(tmp_path: Path, credentials: str = "", config: str = "", **variables: str) -> dict[str, str]:
    (tmp_path / "credentials").write_text(credentials)
    (tmp_path / "config").write_text(config)
    return {"HOME": str(tmp_path), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "config"), **variables}


def found(environ: dict[str, str]) -> list[Winner]:
    return winning_sources(environ, lambda url: url == OWN)


@pytest.mark.parametrize(("variables", "expected"), [
    ({"AWS_ACCESS_KEY_ID": "AKIAX", "AWS_SECRET_ACCESS_KEY": "s"},
     Winner("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY in the environment",
            "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY")),
    ({"AWS_PROFILE": "dev"}, Winner("AWS_PROFILE=dev in the environment", "unset AWS_PROFILE")),
    ({"AWS_DEFAULT_PROFILE": "dev"}, Winner("AWS_DEFAULT_PROFILE=dev in the environment", "unset AWS_DEFAULT_PROFILE")),
    ({"AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn:aws:iam::1:role/x"},
     Winner("web identity (AWS_WEB_IDENTITY_TOKEN_FILE) in the environment",
            "unset AWS_WEB_IDENTITY_TOKEN_FILE AWS_ROLE_ARN")),
    ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"},
     Winner("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/x in the environment (the container-credentials "
            "provider)", "unset AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9999/creds"},
     Winner("AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9999/creds in the environment (the "
            "container-credentials provider)", "unset AWS_CONTAINER_CREDENTIALS_FULL_URI")),
])
def test_each_environment_source_is_named_with_its_removal(tmp_path: Path, variables: dict[str, str],
                                                           expected: Winner) -> None:
    assert found(environment(tmp_path, **variables)) == [expected]


def test_the_default_profile_of_either_file(tmp_path: Path) -> None:
    environ = environment(tmp_path, credentials="[default]\naws_access_key_id = AKIAX\naws_secret_access_key = s\n",
                          config="[default]\nregion = eu-west-1\ncredential_process = /bin/creds\n"
                                 "role_arn = arn:aws:iam::1:role/x\nsource_profile = base\n")
    assert found(environ) == [
        Winner(f"the [default] profile in {tmp_path / 'credentials'} has keys",
               f"remove the [default] section from {tmp_path / 'credentials'} (or rename it to a named profile)"),
        Winner(f"the [default] profile in {tmp_path / 'config'} sets credential_process, role_arn",
               f"remove credential_process, role_arn from [default] in {tmp_path / 'config'} "
               "(or move them to a named profile)")]


def test_sso_and_the_home_directory_files(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\nsso_session = corp\n[sso-session corp]\nsso_region = x\n")
    assert found({"HOME": str(tmp_path)}) == [
        Winner(f"the [default] profile in {tmp_path / '.aws' / 'config'} sets sso_session",
               f"remove sso_session from [default] in {tmp_path / '.aws' / 'config'} (or move them to a named "
               "profile)")]


def test_near_misses_are_not_reported(tmp_path: Path) -> None:
    """A default profile with only a region, keys or a process under another profile, an empty variable, a
    secret without a key id, a full URI that is this daemon's own endpoint, and an unreadable file."""
    environ = environment(tmp_path, credentials="[default]\nregion = eu-west-1\n[other]\naws_access_key_id = A\n",
                          config="[default]\nregion = eu-west-1\n[profile other]\ncredential_process = /bin/x\n",
                          AWS_PROFILE="", AWS_SECRET_ACCESS_KEY="s", AWS_CONTAINER_CREDENTIALS_FULL_URI=OWN)
    assert found(environ) == []
    (tmp_path / "config").write_text("[default\nnot ini")
    assert found(environ) == []
