"""The rules of k8s_rules.py hold on every lane's rendered overlay, and each catches, by field, the
defect it was written for (issue 16's review) on a copy of the manifests that brings it back.

On the manifests before issue 16, the first three rules fail as their broken copies do here (the
HPA-targeted Deployment set `replicas: 2`, the Locust workers were a Deployment, liveness asked
the REST status URL). No mount was unnamed then; the fourth rule guards the class of mistake the
rehearsal (tests/loadtest/test_rehearsal.py) depends on, since it maps mounts through the flags.
"""

from __future__ import annotations

import pytest
import yaml
from checkrun import ROOT, replace_once
from k8s_rules import RULES
from test_kubernetes import LANES, render

BASE = "docker/k8s/base"


def rendered(root, lane) -> list[dict]:
    return list(yaml.safe_load_all(render(root, lane)))


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize("rule", list(RULES))
def test_every_overlay_keeps_the_rule(lane, rule):
    assert RULES[rule](rendered(ROOT, lane)) == []


LIVENESS_GRPC = "          livenessProbe:\n            grpc:\n              port: 8500\n"
LIVENESS_REST = (
    "          livenessProbe:\n            httpGet:\n              path: /v1/models/resnet18\n"
    + " " * 14
    + "port: http\n"
)

BROKEN = {
    "hpa-target-sets-no-replicas": [
        (f"{BASE}/tfserving.yaml", "spec:\n  # No `replicas`", "spec:\n  replicas: 2\n  # No `replicas`"),
    ],
    "bounded-run-is-jobs": [
        (f"{BASE}/locust.yaml", "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: locust-worker",
         "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: locust-worker"),
    ],
    "liveness-apart-from-predict": [(f"{BASE}/tfserving.yaml", LIVENESS_GRPC, LIVENESS_REST)],
    "mount-paths-named-by-flags": [
        (f"{BASE}/locust.yaml", "            - --worker\n            - --master-host=locust-master\n"
         "            - --grpc-target=tfserving:8500\n            - --artifacts=/artifacts\n",
         "            - --worker\n            - --master-host=locust-master\n"
         "            - --grpc-target=tfserving:8500\n            - --artifacts=/data\n"),
    ],
}  # fmt: skip
FIELD = {
    "hpa-target-sets-no-replicas": "Deployment/tfserving: spec.replicas is 2",
    "bounded-run-is-jobs": "locust-worker: kind is Deployment",
    "liveness-apart-from-predict": "livenessProbe.httpGet.port http is the REST port",
    "mount-paths-named-by-flags": "locust-worker container locust: volumeMounts[0].mountPath /artifacts",
}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_names_the_field_of_its_defect(copy_of, rule):
    root = copy_of("docker")
    for path, old, new in BROKEN[rule]:
        replace_once(root / path, old, new)
    problems = "\n".join(RULES[rule](rendered(root, LANES[0])))
    assert FIELD[rule] in problems, problems


def test_a_grpc_liveness_probe_without_the_health_flag_is_named(copy_of):
    root = copy_of("docker")
    replace_once(root / "docker/config/server.flags", "--enable_grpc_healthcheck_service=true\n", "")
    problems = "\n".join(RULES["liveness-apart-from-predict"](rendered(root, LANES[0])))
    assert "--enable_grpc_healthcheck_service=true is not among the server's flags" in problems, problems
