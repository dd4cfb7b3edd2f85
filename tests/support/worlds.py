"""Additions to the scenario's moto world that several tests need."""

from __future__ import annotations

import json
from dataclasses import replace

from metadata_proxy import scenario

ROLE_04_ARN = f"arn:aws:iam::{scenario.ACCOUNT_A}:role/role-04"


def add_role_04(url: str) -> str:
    """A second role in account A that role-02 may assume, for the several-roles tests; returns its ARN."""
    scenario.set_enforcement(url, False)
    iam_a = scenario.session_in(url, scenario.ACCOUNT_A).client("iam", endpoint_url=url)
    setup = replace(scenario.SETUP, trusting_role_name="role-04")
    iam_a.create_role(RoleName="role-04", AssumeRolePolicyDocument=json.dumps(setup.trusting_role_trust_policy()))
    iam_a.put_role_policy(RoleName="role-04", PolicyName="policy-04",
                          PolicyDocument=json.dumps(setup.trusting_role_policy()))
    iam_b = scenario.session_in(url, scenario.ACCOUNT_B).client("iam", endpoint_url=url)
    iam_b.put_role_policy(RoleName="role-02", PolicyName="policy-02b",
                          PolicyDocument=json.dumps(setup.trusted_role_policy()))
    scenario.set_enforcement(url, True)
    return ROLE_04_ARN
