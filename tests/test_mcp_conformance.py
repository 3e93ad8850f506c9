"""The official MCP conformance suite against a running `auxen serve`.

The suite never sends a bearer token, so it reaches /mcp through tests/bearer_forwarder.py,
which adds a real workspace key and passes every other byte through unchanged (Host,
Origin, header spacing): the server behind it authenticates, checks origins and parses
headers itself, as it would for the suite connected directly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.servers import REPO, AuxenServer, free_port

SUITE_DIR = REPO / "tests/conformance"
NODE = SUITE_DIR / "node_modules/.bin/node"
SUITE = SUITE_DIR / "node_modules/@modelcontextprotocol/conformance/dist/index.js"
BASELINE = SUITE_DIR / "baseline.yml"

# Must pass outright; only these checks of theirs may appear in the baseline.
REQUIRED = {
    "server-initialize": set(),
    "ping": set(),
    "tools-list": set(),
    "dns-rebinding-protection": set(),
    "server-session-lifecycle": set(),
    "server-stateless": {
        "sep-2575-server-rejects-undeclared-capability",
        "sep-2575-missing-capability-http-400",
        "sep-2575-server-sends-prompts-list-changed-on-subscription",
        "sep-2575-server-sends-tools-list-changed-on-subscription",
    },
}


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not NODE.exists() or not SUITE.exists():
        pytest.fail(f"conformance suite missing: run `npm ci` in {SUITE_DIR} (make test does)")
    root = tmp_path_factory.mktemp("conformance")
    server = AuxenServer(root / "data", f"sqlite:///{root / 'auxen.db'}").start()
    key = server.init_workspace("conformance@example.com", test=True)
    port = free_port()
    forwarder = subprocess.Popen(
        [sys.executable, str(REPO / "tests/bearer_forwarder.py"), server.url, str(port)],
        env={**server.env(), "AUXEN_FORWARD_KEY": key},
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.get(url, timeout=1)
                break
            except httpx2.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        forwarder.terminate()
        try:
            forwarder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            forwarder.kill()
        # The suite sends odd requests on purpose: none may cost a traceback.
        server.stop_clean()


def _run_suite(url: str, revision: str, out: Path) -> subprocess.CompletedProcess[str]:
    # A revision's required scenarios, or every scenario the suite has (pending and
    # draft ones too) for "all".
    selection = ["--suite", "all"] if revision == "all" else ["--requirements", revision]
    return subprocess.run(
        [
            *(str(NODE), str(SUITE), "server", "--url", url, *selection),
            *("--expected-failures", str(BASELINE), "-o", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _checks(out: Path) -> dict[str, list[dict[str, object]]]:
    """scenario name -> its checks, from the suite's result files."""
    results: dict[str, list[dict[str, object]]] = {}
    for path in out.glob("server-*/checks.json"):
        # "server-<scenario>-<ISO timestamp>"; the timestamp may itself contain "-20".
        scenario = re.sub(r"-\d{4}-\d{2}-\d{2}T.*$", "", path.parent.name.removeprefix("server-"))
        results[scenario] = json.loads(path.read_text())
    return results


REVISIONS = ("2025-11-25", "2026-07-28", "all")
Checks = dict[str, list[dict[str, object]]]


@pytest.fixture(scope="module")
def suite_runs(
    mcp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess[str], Checks]]:
    runs = {}
    for revision in REVISIONS:
        out = tmp_path_factory.mktemp(f"results-{revision}")
        runs[revision] = (_run_suite(mcp_url, revision, out), _checks(out))
    return runs


@pytest.mark.parametrize("revision", REVISIONS)
def test_suite_passes_against_baseline(
    suite_runs: dict[str, tuple[subprocess.CompletedProcess[str], Checks]], revision: str
) -> None:
    run, checks = suite_runs[revision]
    # Exit 0 means: no failure outside the baseline, and no baseline entry that passes.
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert len(checks) >= 20, f"only {len(checks)} scenarios ran"


def test_generic_scenarios_pass(
    suite_runs: dict[str, tuple[subprocess.CompletedProcess[str], Checks]],
) -> None:
    seen: set[str] = set()
    for revision, (_, checks) in suite_runs.items():
        for scenario, allowed in REQUIRED.items():
            if scenario not in checks:
                continue  # not among this revision's requirements
            seen.add(scenario)
            bad = {
                str(c["id"])
                for c in checks[scenario]
                if c["status"] in ("FAILURE", "WARNING") and c["id"] not in allowed
            }
            assert not bad, f"{scenario} failed {bad} under {revision}"
            assert any(c["status"] == "SUCCESS" for c in checks[scenario]), scenario
    assert seen == set(REQUIRED), set(REQUIRED) - seen


BASELINE_REASONS = ("FIXTURE: ", "OPTIONAL: ", "EXTENSION: ")


def test_every_baseline_entry_says_why_it_may_fail() -> None:
    """Only the suite's own fixtures, capabilities Auxen does not declare and the Tasks
    extension may stand in the baseline, each entry with its reason beside it."""
    entries = [line.strip() for line in BASELINE.read_text().splitlines()]
    entries = [line for line in entries if line.startswith("- ")]
    assert len(entries) >= 10
    for line in entries:
        name, _, reason = line.removeprefix("- ").partition("  # ")
        assert re.fullmatch(r"[a-z0-9-]+(:[a-z0-9-]+)?", name), line
        assert reason.startswith(BASELINE_REASONS) and len(reason) > 12, line
        scenario = name.split(":")[0]
        if scenario in REQUIRED:  # only the checks a generic scenario may miss
            assert name.split(":")[1:] and name.split(":")[1] in REQUIRED[scenario], line
