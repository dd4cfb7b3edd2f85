"""`metadata-proxy demo`: the cross-account check, offline. moto plays both AWS accounts (IAM enforcement on), the
daemon serves role-01 with role-02's credentials as its source, and the real AWS CLI (or boto3) shows the
two outcomes: AccessDenied as role-02, the bucket listing through the daemon. Then it keeps serving so the
user can try their own commands, until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from metadata_proxy.config import RoleConfig, ServeConfig

DEMO_INSTALL = "pip install 'metadata-proxy[demo]'"

BOTO3_LS = """
import sys, boto3
s3 = boto3.Session(region_name="us-east-1").client("s3", endpoint_url=sys.argv[1])
try:
    listing = s3.list_objects_v2(Bucket="foobar", Delimiter="/")
except Exception as error:
    sys.exit(f"An error occurred: {error}")
for prefix in listing.get("CommonPrefixes", []):
    print(f"{'PRE':>30} {prefix['Prefix']}")
for item in listing.get("Contents", []):
    print(f"{item['LastModified']:%Y-%m-%d %H:%M:%S} {item['Size']:>10} {item['Key']}")
"""


class DemoUnavailable(Exception):
    """The demo extra is not installed; the message is the pip command to run."""


@dataclass
class Outcome:
    returncode: int
    output: str


def client_environment(**extra: str) -> dict[str, str]:
    """The user's environment without any AWS identity, config file or proxy, plus what the step sets."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k.lower() not in ("http_proxy", "https_proxy")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, **extra)
    return env


def ls_command(moto_url: str) -> list[str]:
    """`aws s3 ls s3://foobar/` with the real CLI when it is installed, else the same listing with boto3."""
    cli = shutil.which("aws", path=os.path.dirname(sys.executable)) or shutil.which("aws")
    if cli:
        return [cli, "s3", "ls", "s3://foobar/", "--endpoint-url", moto_url, "--region", "us-east-1"]
    return [sys.executable, "-c", BOTO3_LS, moto_url]


async def run_client(command: list[str], env: dict[str, str]) -> Outcome:
    process = await asyncio.create_subprocess_exec(*command, env=env, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await process.communicate()
    return Outcome(process.returncode or 0, output.decode(errors="replace").strip())


def listing_rows(output: str) -> list[tuple[str, str]]:
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "PRE":
            rows.append(("PRE", parts[1]))
        elif len(parts) >= 4:
            rows.append((parts[2], parts[3]))
    return rows


def say(text: str = "") -> None:
    print(text, flush=True)


def indent(text: str) -> str:
    return "\n".join("     " + line for line in text.splitlines())


async def demo(port: int, check_only: bool) -> int:
    try:
        from moto.server import ThreadedMotoServer

        from metadata_proxy import scenario
    except ImportError:
        raise DemoUnavailable(f"the demo needs moto to play AWS offline: {DEMO_INSTALL}") from None
    from metadata_proxy.daemon import Daemon

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines would bury the output
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, moto_port = moto.get_host_and_port()
        moto_url = f"http://{host}:{moto_port}"
        source = await asyncio.to_thread(scenario.build_world, moto_url)
        say(f"AWS is played by moto on {moto_url}: account {scenario.ACCOUNT_A} owns bucket foobar and role-01,")
        say(f"account {scenario.ACCOUNT_B} owns role-02 (the instance's role), IAM policies enforced.")
        # The daemon's source identity is role-02, as the instance profile would give it on EC2.
        os.environ.update(source.environ(), AWS_EC2_METADATA_DISABLED="true",
                          AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        role = RoleConfig(role_arn=scenario.ROLE_01_ARN, port=port, role_session_name="metadata-proxy-demo")
        daemon = Daemon(ServeConfig(roles=(role,), region=scenario.REGION, sts_endpoint_url=moto_url))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, daemon.request_stop)
        serving = await daemon.start_in_background()
        if serving.done():  # Ctrl-C before it was ready
            return 1
        url = daemon.url
        command = ls_command(moto_url)
        shown = "aws s3 ls s3://foobar/" if "s3" in command else "boto3 list_objects_v2(Bucket='foobar')"

        say(f"\n1) As role-02, the instance's own identity: {shown}")
        denied = await run_client(command, client_environment(**source.environ()))
        say(indent(denied.output))
        say(f"\n2) Through metadata-proxy on {url} (role-01): {shown}")
        allowed = await run_client(command, client_environment(AWS_EC2_METADATA_SERVICE_ENDPOINT=url))
        say(indent(allowed.output))

        passed = (denied.returncode != 0 and "AccessDenied" in denied.output
                  and allowed.returncode == 0 and listing_rows(allowed.output) == scenario.EXPECTED_LISTING)
        say(f"\nCheck {'passed' if passed else 'FAILED'}: AccessDenied without the proxy, the bucket listing with it.")
        if not check_only:
            say("\nTry your own commands in another terminal (Ctrl-C here to stop):")
            say(f"  export AWS_EC2_METADATA_SERVICE_ENDPOINT={url}")
            say(f"  aws sts get-caller-identity --endpoint-url {moto_url} --region us-east-1")
            say(f"  aws s3 cp s3://foobar/Hello.txt - --endpoint-url {moto_url} --region us-east-1")
            await daemon.stop_requested.wait()
        daemon.request_stop()
        await serving
        return 0 if passed else 1
    finally:
        moto.stop()


def run_demo(port: int, check_only: bool) -> int:
    from metadata_proxy.errors import StartupError

    try:
        return asyncio.run(demo(port, check_only))
    except (DemoUnavailable, StartupError) as error:
        print(f"metadata-proxy: error: {error}", file=sys.stderr)
        return 1
