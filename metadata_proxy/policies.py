"""The IAM documents of cross-account access (its three points), for the user's own accounts.

1. role-01's trust policy (trusting account) names the trusted role as Principal;
2. policy-01 gives role-01 what it may do on the bucket (least privilege by default, the broad
   s3:Get*/s3:List* with --broad);
3. policy-02 lets the trusted role (role-02, the EC2 instance's role) assume role-01.
`metadata-proxy policies` prints them as JSON, or as the `aws iam` commands that create them; the offline
demo and the tests build their moto world from the same functions.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from metadata_proxy.values import ROLE_ARN_RE

PLACEHOLDER_ACCOUNT = "TRUSTING_ACCOUNT_ID"
Document = dict[str, object]


@dataclass(frozen=True)
class CrossAccountSetup:
    trusting_role_name: str  # role-01, in the account that owns the bucket
    trusting_account: str
    trusted_role_arn: str  # role-02, the instance's role
    bucket: str
    external_id: str | None = None
    broad: bool = False

    @property
    def trusting_role_arn(self) -> str:
        return f"arn:aws:iam::{self.trusting_account}:role/{self.trusting_role_name}"

    @property
    def trusted_role_name(self) -> str:
        match = ROLE_ARN_RE.match(self.trusted_role_arn)
        assert match is not None, "validated by the command line"
        return match.group(2)

    def trusting_role_trust_policy(self) -> Document:
        statement: Document = {"Effect": "Allow", "Principal": {"AWS": self.trusted_role_arn},
                               "Action": "sts:AssumeRole"}
        if self.external_id:
            statement["Condition"] = {"StringEquals": {"sts:ExternalId": self.external_id}}
        return {"Version": "2012-10-17", "Statement": [statement]}

    def trusting_role_policy(self) -> Document:
        """policy-01: the broad read-only shape, or just listing the bucket and reading its objects."""
        if self.broad:
            return {"Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}]}
        return {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{self.bucket}"},
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{self.bucket}/*"}]}

    @staticmethod
    def trusted_role_trust_policy() -> Document:
        """role-02's trust policy: EC2 may assume it (it is the instance profile's role)."""
        return {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}

    def trusted_role_policy(self) -> Document:
        """policy-02: the trusted role may assume role-01, and nothing else."""
        return {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": self.trusting_role_arn}]}

    def as_json(self) -> str:
        return json.dumps({
            "trusting_account": {"account": self.trusting_account, "role": self.trusting_role_name,
                                 "trust_policy": self.trusting_role_trust_policy(),
                                 "policy_name": "policy-01", "policy": self.trusting_role_policy()},
            "trusted_account": {"role_arn": self.trusted_role_arn, "role": self.trusted_role_name,
                                "trust_policy": self.trusted_role_trust_policy(),
                                "policy_name": "policy-02", "policy": self.trusted_role_policy(),
                                "instance_profile": self.trusted_role_name},
        }, indent=2)

    def as_cli(self) -> str:
        """The `aws iam` commands, shell-quoted, with the account each block must run in."""
        def doc(document: Document) -> str:
            return shlex.quote(json.dumps(document, separators=(",", ":")))

        one, two = shlex.quote(self.trusting_role_name), shlex.quote(self.trusted_role_name)
        return "\n".join([
            f"# In the trusting account ({self.trusting_account}), which owns bucket {self.bucket}:",
            f"aws iam create-role --role-name {one} --assume-role-policy-document "
            f"{doc(self.trusting_role_trust_policy())}",
            f"aws iam put-role-policy --role-name {one} --policy-name policy-01 --policy-document "
            f"{doc(self.trusting_role_policy())}",
            "",
            f"# In the trusted account (the EC2 instance's, role {self.trusted_role_arn}):",
            f"aws iam create-role --role-name {two} --assume-role-policy-document "
            f"{doc(self.trusted_role_trust_policy())}",
            f"aws iam put-role-policy --role-name {two} --policy-name policy-02 --policy-document "
            f"{doc(self.trusted_role_policy())}",
            f"aws iam create-instance-profile --instance-profile-name {two}",
            f"aws iam add-role-to-instance-profile --instance-profile-name {two} --role-name {two}",
            "# then attach the instance profile to the instance:",
            f"#   aws ec2 associate-iam-instance-profile --instance-id i-... --iam-instance-profile Name={two}",
        ])
