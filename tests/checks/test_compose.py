"""docker/compose.yaml against the Compose Specification's schema (vendored by check-jsonschema),
and the services the README promises: the real image, and the pipeline profile in stage images."""

from __future__ import annotations

import yaml
from checkrun import ROOT, replace_once, run, tool

COMPOSE = "docker/compose.yaml"


def schema(path):
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path)


def test_the_compose_file_matches_the_compose_spec():
    result = schema(ROOT / COMPOSE)
    assert result.code == 0, result.output


def test_the_schema_fails_a_wrong_dependency_condition_and_an_unknown_key(copy_of):
    path = copy_of(COMPOSE) / COMPOSE
    replace_once(path, "        condition: service_completed_successfully\n        required: false\n",
                 "        condition: service_finished\n        required: false\n")  # fmt: skip
    replace_once(path, "    healthcheck:\n", "    health_check:\n")
    result = schema(path)
    assert result.code != 0, result.output
    assert "$.services.tfserving" in result.output, result.output


def test_the_pipeline_runs_export_convert_verify_then_serves():
    services = yaml.safe_load((ROOT / COMPOSE).read_text())["services"]
    chain = [("convert", "export"), ("verify", "convert"), ("tfserving", "verify")]
    for service, after in chain:
        dependency = services[service]["depends_on"][after]
        assert dependency["condition"] == "service_completed_successfully", (service, dependency)
    for stage in ("export", "convert", "verify"):
        assert services[stage]["profiles"] == ["pipeline"], stage
    # Without the profile, `docker compose up` serves what is there (make serve SERVER=docker).
    assert services["tfserving"]["depends_on"]["verify"]["required"] is False
    assert services["export"]["build"]["target"] == "export"
    assert services["convert"]["build"]["target"] == "convert-${LANE:-onnx2tf}"
    assert "profiles" not in services["tfserving"]


def test_the_server_gets_the_config_folders_environment_file():
    # docker/config/server.env: oneDNN on or off, the contraction kernel; the Deployment and the embedded
    # server read the same file.
    tfserving = yaml.safe_load((ROOT / COMPOSE).read_text())["services"]["tfserving"]
    assert "${PT2TF_CONFIG:-./config}:/config:ro" in tfserving["volumes"]
    assert tfserving["env_file"] == ["${PT2TF_CONFIG:-./config}/server.env"]
