"""`metadata-proxy doctor`: checks a live setup step by step, and says which of the three points to fix.

Steps: the source identity (GetCallerIdentity), AssumeRole of each configured role, the assumed identity,
optionally ListObjectsV2 on a bucket with it, and, if a daemon is listening where the configuration says,
that it serves the same identity. Each failure shows STS's or S3's error code and the fix in terms of the
cross-account access's three points: role-01's trust policy (1), policy-01 (2), policy-02 of the source role (3).
Last, for the user running it, every credential source that a client would use before the endpoint (a
warning each, with how to remove it: the daemon's own source may legitimately be one of them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import boto3
import botocore.config
import botocore.exceptions

from metadata_proxy.addresses import endpoint_url, reachable_host
from metadata_proxy.client_chain import winning_sources
from metadata_proxy.config import RoleConfig, ServeConfig
from metadata_proxy.imds_client import EndpointError, NoCredentials, NotListening, imds_credentials
from metadata_proxy.model import RoleSpec, format_time, region_of, role_of_assumed
from metadata_proxy.source import NoSourceCredentials, drop_self_pointing, points_at, source_session
from metadata_proxy.sts import AssumeRoleClient, StsError

ONE_TRY = botocore.config.Config(retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=5,
                                 read_timeout=10)


@dataclass
class Step:
    name: str
    result: str  # "ok", "FAIL", "warn" (does not fail the run) or "skip"
    detail: str
    fix: str = ""


def role_of(arn: str) -> str:
    """The role an assumed-role ARN acts as (what policies name); any other ARN as it is."""
    return role_of_assumed(arn) or arn


def error_code(error: Exception) -> tuple[str, str]:
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        return str(info.get("Code")), str(info.get("Message"))
    return type(error).__name__, str(error)


def assume_fix(code: str, source_arn: str, role: RoleConfig) -> str:
    source_role = role_of(source_arn)
    if code == "AccessDenied":
        return (f"point 1: {role.name}'s trust policy must allow sts:AssumeRole for {source_role} "
                f"(Principal {{\"AWS\": \"{source_role}\"}}"
                + (f", Condition sts:ExternalId = {role.external_id}" if role.external_id else "")
                + f"); point 3: {source_role}'s policy (policy-02) must allow sts:AssumeRole on {role.role_arn}. "
                "`metadata-proxy policies` prints both documents")
    if code == "ValidationError":
        return "check --duration-seconds (role chaining allows at most 3600), the session name and external id"
    return "see the error above"


def bucket_fix(code: str, bucket: str, role: RoleConfig) -> str:
    if code in ("AccessDenied", "AllAccessDisabled"):
        return (f"point 2: {role.name}'s policy (policy-01) must allow s3:ListBucket on arn:aws:s3:::{bucket} "
                f"and s3:GetObject on arn:aws:s3:::{bucket}/* (and a bucket policy must not deny it)")
    if code == "NoSuchBucket":
        return f"there is no bucket {bucket}: check the name"
    return "see the error above"


class Doctor:
    def __init__(self, config: ServeConfig, bucket: str | None, s3_endpoint_url: str | None,
                 daemon_url: str | None) -> None:
        self.config = config
        self.bucket = bucket
        self.s3_endpoint_url = s3_endpoint_url
        self.daemon_url = daemon_url
        self.steps: list[Step] = []

    def add(self, *args: str) -> None:
        self.steps.append(Step(*args))

    def run(self) -> bool:
        """The checks of AWS and the daemon, then the client's chain; True when none of the former failed."""
        rivals = winning_sources(dict(os.environ), self.is_own_endpoint)  # before the environment is trimmed
        passed = self.check_aws()
        for rival in rivals:
            self.add("client credentials", "warn", f"{rival.source}: clients use it, not the endpoint",
                     rival.remove)
        if not rivals:
            self.add("client credentials", "ok", "nothing in this environment or ~/.aws wins over the endpoint")
        return passed

    def is_own_endpoint(self, url: str) -> bool:
        return any(points_at(url, self.config.host, role.port) for role in self.config.roles)

    def check_aws(self) -> bool:
        # The daemon's own chain rules: variables pointing at the daemon are not the source identity.
        for role in self.config.roles:
            drop_self_pointing(os.environ, self.config.host, role.port)
        try:
            session = source_session()
            region = region_of(self.config.region, session.region_name)
            sts = session.client("sts", region_name=region, endpoint_url=self.config.sts_endpoint_url,
                                 config=ONE_TRY)
            source_arn = sts.get_caller_identity()["Arn"]
        except NoSourceCredentials as error:
            self.add("source identity", "FAIL", str(error), "give the host an instance profile, or a profile")
            return False
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            code, message = error_code(error)
            self.add("source identity", "FAIL", f"{code}: {message}",
                     "the source credentials are not valid: check the instance profile or profile")
            return False
        self.add("source identity", "ok", source_arn)
        for role in self.config.roles:
            self.check_role(session, region, source_arn, role)
        return all(step.result != "FAIL" for step in self.steps)

    def check_role(self, session: boto3.Session, region: str, source_arn: str, role: RoleConfig) -> None:
        spec = RoleSpec.of(role, self.config.sts_endpoint_url, region)
        try:
            creds = AssumeRoleClient(session).assume(spec)
        except StsError as error:
            self.add(f"AssumeRole {role.name}", "FAIL", f"{error.code}: {error.message}",
                     assume_fix(error.code, source_arn, role))
            return
        self.add(f"AssumeRole {role.name}", "ok", f"{role.role_arn}, expires {format_time(creds.expiration)}")
        assumed = boto3.Session(aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
                                aws_session_token=creds.session_token, region_name=region)
        try:
            identity = assumed.client("sts", endpoint_url=self.config.sts_endpoint_url,
                                      config=ONE_TRY).get_caller_identity()["Arn"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            self.add("assumed identity", "FAIL", "{}: {}".format(*error_code(error)), "see the error above")
            return
        self.add("assumed identity", "ok", identity)
        if self.bucket:
            self.check_bucket(assumed, role)
        self.check_daemon(role, identity, region)

    def check_bucket(self, assumed: boto3.Session, role: RoleConfig) -> None:
        name = f"ListObjectsV2 s3://{self.bucket}"
        try:
            listing = assumed.client("s3", endpoint_url=self.s3_endpoint_url, config=ONE_TRY).list_objects_v2(
                Bucket=self.bucket, MaxKeys=1000)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            code, message = error_code(error)
            self.add(name, "FAIL", f"{code}: {message}", bucket_fix(code, self.bucket, role))
            return
        self.add(name, "ok", f"{listing.get('KeyCount', 0)} objects")

    def check_daemon(self, role: RoleConfig, identity: str, region: str) -> None:
        url = self.daemon_url or endpoint_url(reachable_host(self.config.host), role.port)
        name = f"local endpoint {url}"
        try:
            _, document = imds_credentials(url)
        except NotListening:
            self.add(name, "skip", "no daemon is listening there")
            return
        except NoCredentials as error:
            self.add(name, "FAIL", str(error), "the daemon cannot assume the role: see its log")
            return
        except EndpointError as error:
            self.add(name, "FAIL", str(error), "is another program on that port?")
            return
        served = boto3.Session(aws_access_key_id=document["AccessKeyId"],
                               aws_secret_access_key=document["SecretAccessKey"],
                               aws_session_token=document["Token"], region_name=region)
        try:
            arn = served.client("sts", endpoint_url=self.config.sts_endpoint_url,
                                config=ONE_TRY).get_caller_identity()["Arn"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            self.add(name, "FAIL", "{}: {}".format(*error_code(error)), "the served credentials do not work")
            return
        if role_of(arn) != role_of(identity):
            self.add(name, "FAIL", f"serves {arn}", f"the daemon there serves another role than {role.role_arn}")
            return
        self.add(name, "ok", f"serves {arn}, expires {document['Expiration']}")

    def table(self) -> str:
        width = max(len(step.name) for step in self.steps)
        lines = [f"{'STEP':<{width}}  RESULT  DETAIL"]
        for step in self.steps:
            lines.append(f"{step.name:<{width}}  {step.result:<6}  {step.detail}")
            if step.fix:
                lines.append(f"{'':<{width}}          fix: {step.fix}")
        return "\n".join(lines)


def run_doctor(config: ServeConfig, bucket: str | None, s3_endpoint_url: str | None, url: str | None) -> int:
    doctor = Doctor(config, bucket, s3_endpoint_url, url)
    passed = doctor.run()
    print(doctor.table())
    return 0 if passed else 1
