"""The Docker sidecar, tested without a Docker engine (none runs on the build machines): the Dockerfile's
stages are laid out as documented (dependencies before the source, no pip in the final image, a health check
that probes every second while starting), the build stage's steps make a working virtualenv without pip,
the compose file wires the sidecar as documented, and the image's entrypoint serves and passes its
HEALTHCHECK with the compose file's environment."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metadata_proxy import scenario
from tests.conftest import World
from tests.support.http import request
from tests.support.processes import DaemonProcess, daemon_env, run

DOCKER = Path(__file__).resolve().parent.parent / "docker"
DOCKERFILE = (DOCKER / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (instruction, arguments), continuation lines joined."""
    joined = re.sub(r"\s*\\\n\s*", " ", DOCKERFILE)
    result: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        if line and not line.startswith("#"):
            name, _, arguments = line.partition(" ")
            if name == "FROM":
                result.append([])
            result[-1].append((name, arguments.strip()))
    return result


def instructions(name: str, stage: int | None = None) -> list[str]:
    """The arguments of every instruction of one kind, in one stage (index) or in all."""
    chosen = stages() if stage is None else [stages()[stage]]
    return [arguments for steps in chosen for kind, arguments in steps if kind == name]


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        if op == ":?":
            raise AssertionError(f"compose needs {name}: {arg}")
        return arg or ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def test_final_image_is_the_slim_base_without_pip_and_the_venv_unprivileged() -> None:
    assert [steps[0][1] for steps in stages()] == ["python:3.11-slim AS build", "python:3.11-slim AS runtime",
                                                   "scratch"]
    (cleanup,) = instructions("RUN", stage=1)
    assert cleanup.startswith("python -m pip uninstall --yes --quiet pip setuptools wheel &&")
    # Onto an empty image, so the removed files are not still in a lower layer.
    assert instructions("COPY", stage=2) == ["--from=runtime / /",
                                             "--from=build /opt/metadata-proxy /opt/metadata-proxy"]
    (user,) = instructions("USER", stage=2)
    assert not user.startswith(("0", "root"))


def test_dependencies_are_installed_in_a_layer_before_the_source() -> None:
    build = stages()[0]
    order = [f"{kind} {arguments}" for kind, arguments in build]
    dependencies = next(i for i, step in enumerate(order) if "--requirement" in step)
    assert order.index("COPY pyproject.toml /src/") < dependencies < order.index(
        "COPY metadata_proxy /src/metadata_proxy")


def test_healthcheck_probes_every_second_while_starting() -> None:
    (health,) = instructions("HEALTHCHECK")
    options = dict(re.findall(r"--([\w-]+)=(\S+)", health[:health.index("CMD")]))
    assert options["start-interval"] == "1s" and options["start-period"] == "60s"
    assert options["interval"] == "30s"
    assert yaml.safe_load(health[health.index("CMD") + 3:].strip()) == ["metadata-proxy", "healthcheck"]
    assert "--format docker" in DOCKERFILE  # podman's default OCI format would drop the HEALTHCHECK


def test_compose_file_wires_both_consumers_to_the_sidecars_loopback() -> None:
    services = COMPOSE["services"]
    sidecar, app, imds = services["metadata-proxy"], services["app"], services["app-imds"]
    for consumer in (app, imds):
        assert consumer["network_mode"] == "service:metadata-proxy"
        assert consumer["depends_on"]["metadata-proxy"]["condition"] == "service_healthy"
    env = sidecar["environment"]
    token_file = env["METADATA_PROXY_CONTAINER_TOKEN_FILE"]
    assert app["environment"]["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == token_file
    assert app["environment"]["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == \
        f"http://127.0.0.1:9254/v1/credentials/{env['METADATA_PROXY_NAME']}"
    assert imds["environment"]["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == "http://127.0.0.1:9254/"
    group = env["METADATA_PROXY_CONTAINER_TOKEN_GROUP"]  # the app runs as another user, in the token group
    app_uid, app_gid = app["user"].split(":")
    (sidecar_user,) = instructions("USER")
    assert app_gid == group and app_uid not in ("0", "root", sidecar_user.split(":")[0])
    assert group in sidecar["group_add"]  # a daemon can only give its files to a group it is in
    token_dir = str(Path(token_file).parent)
    assert f"tokens:{token_dir}" in sidecar["volumes"] and f"tokens:{token_dir}:ro" in app["volumes"]
    assert "tokens" in COMPOSE["volumes"]


@pytest.mark.timeout(900)
def test_the_build_stage_makes_a_working_venv_without_pip(tmp_path: Path) -> None:
    """The build stage's COPY and RUN steps, in order, with the paths moved under tmp_path, and python and
    pip being this interpreter's (the base image's pip is outside the venv too)."""
    root = Path(__file__).resolve().parent.parent
    venv, src, tools = tmp_path / "venv", tmp_path / "src", tmp_path / "bin"
    tools.mkdir()
    (tools / "python").symlink_to(sys.executable)
    (tools / "pip").write_text(f'#!/bin/sh\nexec {sys.executable} -m pip "$@"\n')
    (tools / "pip").chmod(0o755)
    env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for kind, arguments in stages()[0][1:]:
        arguments = arguments.replace("/opt/metadata-proxy", str(venv)).replace("/src", str(src))
        if kind == "COPY":
            source, destination = arguments.split()
            if destination.endswith("/"):  # into a directory, as COPY does
                Path(destination).mkdir(parents=True, exist_ok=True)
                destination += Path(source).name
            copy = shutil.copytree if (root / source).is_dir() else shutil.copy
            copy(root / source, destination)
        elif kind == "RUN":
            result = subprocess.run(["sh", "-c", arguments], env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    version = run([str(venv / "bin" / "metadata-proxy"), "--version"], {"PATH": "/usr/bin:/bin"})
    assert version.returncode == 0 and version.stdout.startswith("metadata-proxy ")
    names = "import importlib.metadata as m; print(*(d.metadata['Name'].lower() for d in m.distributions()))"
    listing = run([str(venv / "bin" / "python"), "-c", names], {"PATH": "/usr/bin:/bin"})
    installed = listing.stdout.split()
    assert "boto3" in installed and "aiohttp" in installed
    assert not {"pip", "setuptools", "wheel"} & set(installed), installed


@pytest.fixture
def compose_environment(world: World, tmp_path: Path) -> dict[str, str]:
    """The sidecar's environment as compose would give it, plus what a test has to change: the STS
    endpoint (moto), a free port, and the token directory (the volume) under tmp_path."""
    variables = {"ROLE_ARN": scenario.ROLE_01_ARN, "AWS_REGION": scenario.REGION}
    env = {k: interpolate(str(v), variables) for k, v in COMPOSE["services"]["metadata-proxy"]["environment"].items()}
    image_env = dict(re.findall(r"(\w+)=(\S+)", instructions("ENV")[0]))
    env = {**{k: v for k, v in image_env.items() if k.startswith("METADATA_PROXY_")}, **env}
    env["METADATA_PROXY_CONTAINER_TOKEN_FILE"] = str(tmp_path / "volume" / Path(env[
        "METADATA_PROXY_CONTAINER_TOKEN_FILE"]).name)
    env.update(METADATA_PROXY_STS_ENDPOINT_URL=world.sts_url, METADATA_PROXY_PORT="0")
    if os.geteuid() != 0:  # compose's group_add is not ours to give: a user can only use its own groups
        env["METADATA_PROXY_CONTAINER_TOKEN_GROUP"] = str(os.getgid())
    return env


def test_entrypoint_serves_with_the_compose_environment(world: World, tmp_path: Path,
                                                        compose_environment: dict[str, str]) -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    argv = [*yaml.safe_load(entrypoint), *yaml.safe_load(cmd)]
    assert argv == ["metadata-proxy", "serve"]
    process = DaemonProcess(argv[1:], daemon_env(tmp_path, **world.source.environ(), **compose_environment))
    try:
        url = process.wait_ready()
        assert url, process.stderr
        full_uri = process.export("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        consumer_uri = COMPOSE["services"]["app"]["environment"]["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        assert full_uri.split("/", 3)[3] == consumer_uri.split("/", 3)[3]
        token_file = Path(compose_environment["METADATA_PROXY_CONTAINER_TOKEN_FILE"])
        token = token_file.read_text()
        assert (stat.S_IMODE(token_file.stat().st_mode), token_file.stat().st_gid) == \
            (0o640, int(compose_environment["METADATA_PROXY_CONTAINER_TOKEN_GROUP"]))
        assert request(url, "GET", "/" + full_uri.split("/", 3)[3], {"Authorization": token}).status == 200

        (health,) = instructions("HEALTHCHECK")
        probe = yaml.safe_load(health[health.index("CMD") + 3:].strip())
        port = url.rstrip("/").rsplit(":", 1)[1]
        env = daemon_env(tmp_path, **{**compose_environment, "METADATA_PROXY_PORT": port})
        healthy = run([sys.executable, "-m", "metadata_proxy", *probe[1:]], env)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        assert process.stop() == 0
    unhealthy = run([sys.executable, "-m", "metadata_proxy", "healthcheck", "--url", url], daemon_env(tmp_path))
    assert unhealthy.returncode == 1
    (line,) = unhealthy.stderr.splitlines()
    assert line.startswith("metadata-proxy: unhealthy:")
