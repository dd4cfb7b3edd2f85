"""Mutation testing of the security-critical modules: `python -m tests.mutation [MODULE ...]` (needs the `dev` extra).

mutmut changes one thing at a time in a module (a `<` into `<=`, a constant, a string, a dropped call) and runs
that module's fast tests against each change; a change that no test notices (a surviving mutant) is either a
gap in the tests or a change with no behaviour a user could observe (an equivalent mutant, listed below with
its reason). Each module runs on its own, in a fresh `mutants/` work directory, with only the test files of
MODULES; within those, mutmut runs for each mutant only the tests that call the mutated function. The result
per module and every survivor's diff are printed at the end; docs/testing.md holds the last run's figures.

This is slow (minutes per module on two cores), so CI does not run it: run it after changing one of these
modules or its tests, and update docs/testing.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants"

# module -> its fast tests (unit tests and in-process daemons; a daemon in a child process runs unmutated code)
MODULES: dict[str, tuple[str, ...]] = {
    "tokens": ("tests/test_tokens.py",),
    "container": ("tests/test_container.py",),
    "tokenfile": ("tests/test_tokenfile.py",),
    "gate": ("tests/test_gate.py", "tests/test_connections.py"),
    "ledger": ("tests/test_ledger.py", "tests/test_gate.py", "tests/test_audit.py"),
    "audit": ("tests/test_audit.py", "tests/test_gate.py"),
    "connections": ("tests/test_connections.py",),
    "refresher": ("tests/test_refresher.py",),
    "store": ("tests/test_refresher.py",),
}
# Every test of a mutation run gets this deadline (instead of the suite's 180 s): a mutant that stops the
# refresher or hangs a request fails its test quickly rather than holding a worker.
TEST_TIMEOUT = "30"

# Mutants that change no behaviour a user could observe, by name, with the text of the mutated line (so that a
# renumbering after an edit of the module shows up as a survivor rather than being excused by a stale entry).
RANDOM_LENGTH = "secrets.token_bytes(None) draws 32 bytes, the default"
CODEC_NAME = "codec names are case-insensitive ('ASCII' is 'ascii', 'UTF-8' is 'utf-8')"
MEMO_ONLY = ("only the memo of verified tokens is bypassed: every token is checked by its HMAC again, with the "
             "same answer, as the memo holds the expiry the token itself carries (the memo saves time, which bench/ "
             "measures, not behaviour)")
LONG_READ = ("reading more of the file than 4097 characters: a file longer than 4096 is refused either way "
             "(the operator's own regular file, so reading it whole costs only memory)")
NO_SYMLINK_HERE = ("the path is never a symbolic link here: ensure_private_dir has lstat'ed it as a directory, the "
                   "other caller passes a directory it has just made, and for a link lstat's lrwxrwxrwx lets the "
                   "group pass before any chown (the flag guards a swap between lstat and chown no test can time)")
TEMPORARY_NAME = ("the name of the temporary file, which exists only between mkstemp and its rename (or unlink): "
                  "tests check that the directory then holds the token file alone")
GENERATION = ("readers compare the store's generation for change only: any start value, and any step that "
              "gives a new value each time, serve the same documents")
HOST_MEMO = ("only the memo of judged Host values is bypassed (a judged Host remembered as None reads as never "
             "judged, by the gate and by allows()): every Host is judged again, with the same answer")
FIRST_ADD = ("the value `last` starts with is never read: an entry is made only by Ledger.add, which adds its "
             "first request at once and so sets `last` to that request's time")
HEADER_CASE = "HTTP header names are case-insensitive (aiohttp's CIMultiDict, and every client)"
EQUIVALENT: dict[str, tuple[str, str]] = {
    "tokens.xǁTokenAuthorityǁ__init____mutmut_4": ("secrets.token_bytes(None)", RANDOM_LENGTH + " (the same key size)"),
    "tokens.xǁTokenAuthorityǁ__init____mutmut_5": (
        "secrets.token_bytes(33)", "a 33-byte HMAC key instead of 32: the key is secret and random either way; "
        "HMAC-SHA256 takes keys of any length up to 64 bytes as they are"),
    "tokens.xǁTokenAuthorityǁissue__mutmut_13": (
        "secrets.token_bytes(None)", RANDOM_LENGTH + ", and the struct format '8s' keeps the first 8 of them"),
    "tokens.xǁTokenAuthorityǁissue__mutmut_14": (
        "secrets.token_bytes(9)", "the struct format '8s' keeps the first 8 of 9 random bytes: the same nonce size"),
    "tokens.xǁTokenAuthorityǁissue__mutmut_20": ('.decode("ASCII")', CODEC_NAME),
    "tokens.xǁTokenAuthorityǁ_check__mutmut_4": ('.encode("ASCII")', CODEC_NAME),
    "tokens.xǁTokenAuthorityǁverify__mutmut_1": ("expires = None", MEMO_ONLY),
    "tokens.xǁTokenAuthorityǁverify__mutmut_2": ("self._verified.get(None)", MEMO_ONLY),
    "tokenfile.x__read_trusted__mutmut_39": (
        "mode & 33 and", "0o041 instead of 0o040: the 0o001 bit it adds is refused already by `mode & 0o037`"),
    "tokenfile.x__read_trusted__mutmut_49": ("file.read(None)", LONG_READ),
    "tokenfile.x__read_trusted__mutmut_51": ("file.read(MAX_TOKEN_LENGTH + 2)", LONG_READ),
    **{f"tokenfile.x_let_group_through__mutmut_{number}": (fragment, NO_SYMLINK_HERE) for number, fragment in (
        (9, "follow_symlinks=None"), (13, "group, )"), (16, "follow_symlinks=True"), (19, "follow_symlinks=None"),
        (22, "0o710, )"), (24, "follow_symlinks=True"))},
    "tokenfile.x_load_or_create_token__mutmut_13": ('raw.decode("ASCII")', CODEC_NAME),
    "tokenfile.x_load_or_create_token__mutmut_16": (
        "secrets.token_urlsafe(None)", "token_urlsafe(None) draws 32 bytes, the default: the same 43 characters"),
    **{f"tokenfile.x_load_or_create_token__mutmut_{number}": (fragment, TEMPORARY_NAME) for number, fragment in (
        (34, "prefix=None"), (36, "dir=directory, )"), (37, 'prefix="XX.token-XX"'), (38, 'prefix=".TOKEN-"'))},
    "tokenfile.x_load_or_create_token__mutmut_57": (
        "contextlib.suppress(None)", "whether an error unlinking the temporary file is suppressed: this process made "
        "that file a moment ago in a directory it could write, and root or the owner can always unlink it"),
    "refresher.xǁRefreshPolicyǁbackoff__mutmut_15": (
        "min(failures - 1, 31)", "the exponent is bounded only so that 2 ** n stays a small number: 2 ** 30 and "
        "2 ** 31 seconds are both far past the 60-second cap, which min() applies either way"),
    "store.xǁCredentialStoreǁ__init____mutmut_1": (
        "maxsize: int = 1025", "room for 1025 roles instead of 1024: the daemon stores one entry per configured role, "
        "each with a listener of its own, so neither bound is reached"),
    "store.xǁCredentialStoreǁ__init____mutmut_13": ("self.generation = 1", GENERATION),
    "store.xǁCredentialStoreǁdiscard__mutmut_6": ("self.generation += 2", GENERATION),
    "store.xǁCredentialStoreǁput__mutmut_10": ("self.generation += 2", GENERATION),
    "connections.x_descriptor_budget__mutmut_5": (
        "hard >= soft", "also 'raises' a soft limit that already equals the hard one: setting the limit it has"),
    "connections.xǁConnectionTableǁadmit__mutmut_27": (
        '[connection] = ""', "the per-uid dict is an ordered set: its values are never read"),
    "gate.x__split_host__mutmut_5": (
        'rpartition("]")', "with two ']' either split leaves one in the address or in the port, and both are refused"),
    "gate.x_guarded__mutmut_39": (
        "type(None) is web.Response", "only the exact-class shortcut is lost: isinstance(answer, web.StreamResponse) "
        "then answers for a web.Response as well"),
    "gate.x_guarded__mutmut_64": (
        "entries.get(None)", "only the gate's own lookup is lost: every request then goes through Ledger.add, which "
        "looks its key up and updates the same entry"),
    "gate.x_guarded__mutmut_76": (
        "access_log.level <= DEBUG or enabled(DEBUG)", "the line is built more often, never written more often: "
        "access_log.debug asks logging itself, which drops it below the DEBUG level"),
    "gate.xǁHostCheckǁ_judge__mutmut_12": (
        'rstrip("XX.XX")', "the name is lower-cased first, so there is no 'X' to strip besides the dots"),
    "gate.xǁHostCheckǁallows__mutmut_7": (
        "len(self.memo) <= self.MEMO", "257 entries remembered instead of 256 (the one for a request without Host "
        "among them): a bound on memory either way"),
    "gate.xǁHostCheckǁallows__mutmut_8": ("self.memo[host_header] = None", HOST_MEMO),
    "ledger.xǁEntryǁ__init____mutmut_11": ("self.last = None", FIRST_ADD),
    "ledger.xǁEntryǁ__init____mutmut_12": ("self.last = 1.0", FIRST_ADD),
    "ledger.xǁLedgerǁ__init____mutmut_3": (
        "lambda key, entry: 0", "what the default hook returns: Ledger.add calls it for its effect and never reads "
        "the result"),
    "audit.xǁAuditTrailǁ_new__mutmut_11": (
        "role is not None or entry.first is not None", "an assertion that holds either way: kind() gives no handout "
        "for a request without a role, and the entry has just had its first request, so both sides are true"),
    "container.xǁContainerRoutesǁ__call____mutmut_31": ('{"allow": "GET, HEAD"}', HEADER_CASE),
    "container.xǁContainerRoutesǁ__call____mutmut_32": ('{"ALLOW": "GET, HEAD"}', HEADER_CASE),
    "container.xǁContainerRoutesǁ__call____mutmut_38": ('headers.get("authorization")', HEADER_CASE),
    "container.xǁContainerRoutesǁ__call____mutmut_39": ('headers.get("AUTHORIZATION")', HEADER_CASE),
    "container.xǁContainerRoutesǁ__call____mutmut_69": ('encode("UTF-8", "surrogateescape")', CODEC_NAME),
    "container.xǁContainerRoutesǁ_document__mutmut_3": (
        "self._rendered[1] is not creds", "the document is rendered again for every request instead of once per "
        "refresh: the same bytes (the memo saves time, not behaviour)"),
}

# mutmut's exit codes per mutant, grouped as the report counts them
KILLED = {1, 3}  # a failing test
DEADLINE = {24, -24, 36, 152, 255}  # a test that hung until its deadline or CPU limit: noticed too
SURVIVED = {0}
NO_TESTS = {5, 33}


def run_one(module: str, jobs: int) -> int:
    """Runs mutmut over one module in this process (mutmut keeps global state: one module per process)."""
    from mutmut import configuration
    from mutmut.__main__ import cli

    config = configuration.config()
    config.only_mutate = [f"metadata_proxy/{module}.py"]
    config.pytest_add_cli_args_test_selection = list(MODULES[module])
    config.pytest_add_cli_args = [*config.pytest_add_cli_args, f"--timeout={TEST_TIMEOUT}"]
    try:
        cli.main(["run", "--max-children", str(jobs), f"metadata_proxy.{module}.*"], standalone_mode=False)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def mutated_line(name: str) -> str:
    """The diff of one mutant, as `mutmut show` prints it."""
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True,
                           text=True, check=False)
    return shown.stdout


def summarise(module: str) -> dict[str, object]:
    exit_codes: dict[str, int | None] = json.loads(
        (WORK / "metadata_proxy" / f"{module}.py.meta").read_text())["exit_code_by_key"]
    counts: Counter[str] = Counter()
    survivors: dict[str, str] = {}
    equivalents: dict[str, str] = {}
    for name, code in sorted(exit_codes.items()):
        if code in KILLED or code in DEADLINE:
            counts["killed"] += 1
            counts["by deadline"] += code in DEADLINE
        elif code in SURVIVED and (known := EQUIVALENT.get(name.removeprefix("metadata_proxy."))) \
                and any(line.startswith("+") and known[0] in line for line in mutated_line(name).splitlines()):
            counts["equivalent"] += 1
            equivalents[name] = f"`{known[0]}`: {known[1]}"
        elif code in SURVIVED or code in NO_TESTS:
            counts["survived" if code in SURVIVED else "no tests"] += 1
            survivors[name] = mutated_line(name)
        else:
            counts[f"exit {code}"] += 1
            survivors[name] = mutated_line(name)
    return {"module": module, "generated": len(exit_codes), **counts, "survivors": survivors,
            "equivalents": equivalents}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"which modules (default: all of {', '.join(MODULES)})")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default: 2)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: the child process of one module
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args.one, args.jobs)
    if importlib.util.find_spec("mutmut") is None:
        parser.error("mutmut is not installed: .venv/bin/pip install -e '.[dev]'")
    if unknown := set(args.modules) - set(MODULES):
        parser.error(f"no such module: {', '.join(sorted(unknown))} (choose from {', '.join(MODULES)})")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    results, failed = [], []
    for module in args.modules or MODULES:
        shutil.rmtree(WORK, ignore_errors=True)  # mutmut reuses stale copies of sources and tests otherwise
        status = subprocess.run([sys.executable, "-m", "tests.mutation", "--one", module, "--jobs", str(args.jobs)],
                                cwd=ROOT, check=False).returncode
        if status == 0:
            results.append(summarise(module))
        else:
            failed.append(f"mutmut failed on {module} (exit status {status}); see its output above")
    columns = ("module", "generated", "killed", "by deadline", "equivalent", "survived", "no tests")
    print(f"\nmutmut {version('mutmut')} on commit {commit}\n\n| {' | '.join(columns)} |")
    for result in results:
        print(f"| {' | '.join(str(result.get(key, 0)) for key in columns)} |")
    for result in results:
        for name, reason in result["equivalents"].items():  # type: ignore[union-attr]
            print(f"EQUIVALENT {name.removeprefix('metadata_proxy.')}: {reason}")
    for result in results:
        for name, diff in result["survivors"].items():  # type: ignore[union-attr]
            print(f"\nSURVIVED {name}\n{diff}")
    print(*failed, sep="\n", file=sys.stderr)
    return 1 if failed or any(result["survivors"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
