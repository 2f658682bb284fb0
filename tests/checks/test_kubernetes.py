"""docker/k8s: every lane's overlay rendered with kustomize (kubectl's built-in), every resource
validated with kubernetes-validate against the Kubernetes API's published schemas (strict:
unknown fields fail), and the shape the README promises checked on what renders."""

from __future__ import annotations

import shutil

import pytest
import yaml
from checkrun import ROOT, replace_once, run, tool
from lane_consistency import OVERLAYS
from pt2tf_serve.process import read_env_file
from pt2tf_toolchain.matrix import load_matrix

LANES = list(load_matrix().lanes)


def kustomize(folder):
    # kustomization.yaml is not a Kubernetes resource: it is rendered, and what it renders is validated.
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: install it (kustomize is built in) to render docker/k8s overlays")
    return run(kubectl, "kustomize", folder)


def validate(tmp_path, rendered: str):
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    return run(tool("kubernetes-validate"), "--strict", "--quiet", path)


def render(root, lane) -> str:
    result = kustomize(root / OVERLAYS / lane)
    assert result.code == 0, result.output
    return result.output


@pytest.mark.parametrize("lane", LANES)
def test_each_overlay_renders_and_validates(tmp_path, lane):
    rendered = render(ROOT, lane)
    result = validate(tmp_path, rendered)
    assert result.code == 0, result.output
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered))
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "ConfigMap", "ConfigMap", "PersistentVolumeClaim", "Pod", "Deployment", "Service",
         "Service", "HorizontalPodAutoscaler", "Job", "Job"]
    )  # fmt: skip  # ConfigMaps: the fill script, docker/config's files, and server.env as the server's environment


def test_a_misspelt_field_and_a_wrong_type_fail_validation(tmp_path, copy_of):
    root = copy_of("docker")
    base = root / "docker/k8s/base/tfserving.yaml"
    replace_once(base, "          readinessProbe:\n", "          readynessProbe:\n")
    replace_once(base, "  minReplicas: 2\n", '  minReplicas: "two"\n')
    result = validate(tmp_path, render(root, LANES[0]))
    assert result.code != 0, result.output
    assert "readynessProbe" in result.output and "minReplicas" in result.output, result.output


def test_a_broken_overlay_patch_fails_to_render(copy_of):
    root = copy_of("docker")
    overlay = root / OVERLAYS / LANES[0] / "kustomization.yaml"
    replace_once(overlay, "/spec/template/spec/containers/0/volumeMounts/1/subPath\n        value: models/",
                 "/spec/template/spec/containers/3/volumeMounts/1/subPath\n        value: models/")  # fmt: skip
    result = kustomize(root / OVERLAYS / LANES[0])
    assert result.code != 0 and "containers/3" in result.output, result.output


@pytest.mark.parametrize("lane", LANES)
def test_serving_and_load_generation_have_the_promised_shape(lane):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(render(ROOT, lane))}
    serving = docs["Deployment", "tfserving"]["spec"]
    container = serving["template"]["spec"]["containers"][0]
    assert "replicas" not in serving  # the HPA's (tests/checks/k8s_rules.py)
    assert "/v1/models/resnet18" in container["startupProbe"]["exec"]["command"][-1]
    assert container["readinessProbe"]["grpc"] == {"port": 8500, "service": "PredictionService"}
    assert container["livenessProbe"]["grpc"] == {"port": 8500}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["subPath"] == f"models/{lane}" and mounts["/models"]["readOnly"]
    config = next(d for (kind, name), d in docs.items() if kind == "ConfigMap" and name.startswith("tfserving-config"))
    on_disk = {p.name for p in (ROOT / "docker/config").iterdir() if p.name != "kustomization.yaml"}
    assert set(config["data"]) == on_disk, "the ConfigMap must carry every file of docker/config"
    # server.env is also the server's environment, as compose's env_file and the embedded server read it.
    env = next(d for (kind, name), d in docs.items() if kind == "ConfigMap" and name.startswith("tfserving-env"))
    assert container["envFrom"] == [{"configMapRef": {"name": env["metadata"]["name"]}}]
    assert env.get("data", {}) == read_env_file(ROOT / "docker/config/server.env")
    ports = {p["name"]: p["port"] for p in docs["Service", "tfserving"]["spec"]["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert docs["HorizontalPodAutoscaler", "tfserving"]["spec"]["scaleTargetRef"]["name"] == "tfserving"
    master = docs["Job", "locust-master"]["spec"]["template"]["spec"]["containers"][0]["args"]
    workers = docs["Job", "locust-worker"]["spec"]
    worker = workers["template"]["spec"]["containers"][0]["args"]
    assert "--master" in master and "--host=http://tfserving:8501" in master
    assert "--worker" in worker and "--master-host=locust-master" in worker
    for args in (master, worker):
        assert "--locustfile=/app/loadtest/locustfile.py" in args and "--grpc-target=tfserving:8500" in args
    expected = int(next(a for a in master if a.startswith("--expect-workers=")).split("=")[1])
    assert workers["parallelism"] == workers["completions"] == expected
    assert docs["Pod", "fill"]["spec"]["containers"][0]["args"][-1] == lane


@pytest.mark.parametrize("lane", LANES)
def test_every_resource_is_applied_in_one_of_the_readmes_steps(lane):
    # README "Past one machine" applies each step with -l pt2tf.io/step=STEP: an unlabelled resource never is.
    steps = {
        d["metadata"]["name"]: d["metadata"].get("labels", {}).get("pt2tf.io/step")
        for d in yaml.safe_load_all(render(ROOT, lane))
    }
    assert {name: step for name, step in steps.items() if step not in ("volume", "serving", "load")} == {}
