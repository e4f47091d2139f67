"""ONNX's own node test cases through the ncnn writer and runtime.

Every case whose ops are all in the rule table must pass, or be listed in
``conformance_skips.SKIPS`` with a reason; a listed case that starts passing
fails the test too (the table must shrink when a rule improves). The cases run
in two spawned child processes so a native ncnn crash cannot take pytest down.
"""

from __future__ import annotations

import pytest

from mconv.targets.ncnn import conformance
from mconv.targets.ncnn.target import NcnnTarget


@pytest.fixture(scope="module")
def results() -> dict[str, conformance.CaseResult]:
    return {r.name: r for r in conformance.run_isolated(chunks=2)}


def test_rule_table_claims_cases(results) -> None:
    # The selection really uses the rule table, and it is substantial.
    assert len(results) > 600
    ops = NcnnTarget().supported_ops()
    for r in results.values():
        assert set(r.ops) <= ops


def test_every_claimed_case_passes_or_is_listed(results) -> None:
    bad = [f"{r.name}: {r.detail}" for r in results.values() if r.status != "pass" and r.name not in conformance.SKIPS]
    assert not bad, f"{len(bad)} case(s) neither pass nor are listed:\n" + "\n".join(bad)


def test_skip_table_is_not_stale(results) -> None:
    stale = [n for n in conformance.SKIPS if n in results and results[n].status == "pass"]
    assert not stale, f"listed as skipped but passing now: {stale}"
    unknown = [n for n in conformance.SKIPS if n not in results]
    assert not unknown, f"listed cases that are no longer selected: {unknown}"
    assert all(reason.strip() for reason in conformance.SKIPS.values())


def test_pass_counts(results) -> None:
    passed = sum(r.status == "pass" for r in results.values())
    assert passed >= 590
    print(conformance.summarize(list(results.values())))
