"""The README's promises that can be checked mechanically."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def test_readme_opens_with_the_demo_and_the_test_command_and_ci_runs_the_latter() -> None:
    first, second = shell_blocks()[1:3]  # after the one-line usage example
    assert "metadata-proxy demo" in first
    test_command = second.strip()
    assert "pytest" in test_command
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and line[0] not in "#"]
    assert test_command in ci_lines


def test_client_advice_of_contract_8_10_is_documented() -> None:
    """Contract §8.10: trailing slash, NO_PROXY, AWS_EC2_METADATA_DISABLED, other credential sources."""
    assert "http://127.0.0.1:9254/" in README and "trailing slash" in README
    assert "NO_PROXY=127.0.0.1,localhost" in README
    assert "AWS_EC2_METADATA_DISABLED" in README
    assert "credential chain" in README


def test_every_serve_flag_is_documented() -> None:
    from metadata_proxy.options import OPTIONS

    for option in OPTIONS:
        assert f"`{option.flag}" in README, option.flag
