"""The Kubernetes manifests rehearsed here: every lane's overlay rendered by kustomize, each container's
own command and arguments run on this machine, and what a cluster would see checked: probes answer as
configured (also under the workers' load), the master gets its workers, the run ends, the workers
exit, the reports are written. Where a manifest and the rehearsal disagree, the failure names the field.

The steps are README "Past one machine" in order, each resource taken by its pt2tf.io/step label.
There is no cluster and no image here, so they are stood in for, and nothing else is:
- the images: `tensorflow_model_server` is the embedded server (PT2TF_SERVE_PYTHON: the default lane's
  env, serving the default lane's fresh conversion on every overlay) with --volume mapping the
  container's paths; `locust` is the loadtest env's; busybox's `sh` and `test` and the TF Serving
  image's `bash` are this machine's; /app (the loadtest image's code) is this checkout;
- the pod network: each container port is a free loopback port; a Service name is 127.0.0.1 and its
  port the selected container's; `kubectl cp` is a copy into the fill pod's incoming/ folder;
- the volume: a temporary folder; a subPath mount is its subfolder; a ConfigMap is files from its rendered data;
- the size: Locust's --users, --spawn-rate and --run-time are scaled to this machine (2 shared cores,
  loopback only); the number of workers, every flag and every probe are the manifest's.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pt2tf_serve.process import Spawned, free_port, run_spawned
from pt2tf_toolchain.matrix import load_matrix

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "docker" / "k8s" / "overlays"
LANES = list(load_matrix().lanes)
MODEL = "resnet18"
STEP = "pt2tf.io/step"
# The load, scaled to loopback on a shared 2-core machine; everything else is the manifest's.
SCALE = {"--users": "8", "--spawn-rate": "8", "--run-time": "10s", "--expect-workers-max-wait": "90"}
SERVER_START_SECONDS = 300


def _env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run this suite through nox (nox -s 'tests(loadtest)')")
    return Path(value)


def render(lane: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: install it (kustomize is built in) to render docker/k8s overlays")
    done = run_spawned([kubectl, "kustomize", str(OVERLAYS / lane)], timeout=120)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def name_of(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def pod_labels(doc: dict) -> dict:
    return (doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]).get("labels", {})


class Cluster:
    """The rendered overlay, and the processes and folders that stand in for its pods on this machine."""

    def __init__(self, docs: list[dict], workdir: Path, serve_python: Path):
        self.docs = docs
        self.workdir = workdir
        self.volume = workdir / "volume"  # the PersistentVolumeClaim
        self.volume.mkdir()
        self.serve_python = serve_python
        self.ports: dict[tuple[str, int], int] = {}  # (workload, container port) → loopback port
        self.processes: list[tuple[str, Spawned, Path]] = []

    def step(self, name: str) -> list[dict]:
        return [d for d in self.docs if d["metadata"].get("labels", {}).get(STEP) == name]

    def find(self, kind: str, name: str) -> dict:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert found, f"the overlay renders no {kind}/{name}"
        return found[0]

    # ---------------------------------------------------------------- mapping

    def mounts(self, doc: dict, container: dict) -> dict[str, Path]:
        """Container path → folder here: ConfigMaps written out, the volume's subPaths, the image's /app."""
        volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
        mapped = {"/app": ROOT}
        for index, mount in enumerate(container.get("volumeMounts", [])):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                config = self.find("ConfigMap", volume["configMap"]["name"])
                folder = self.workdir / "configmaps" / config["metadata"]["name"]
                folder.mkdir(parents=True, exist_ok=True)
                for key, text in config.get("data", {}).items():
                    (folder / key).write_text(text)
                mapped[mount["mountPath"]] = folder
            else:
                folder = self.volume / mount.get("subPath", "")
                where = f"{name_of(doc)} container {container['name']}: volumeMounts[{index}].subPath"
                # The kubelet does not create a read-only subPath: the fill step must have made it.
                assert folder.is_dir(), f"{where} {mount.get('subPath')} does not exist on the volume at this step"
                mapped[mount["mountPath"]] = folder
        return mapped

    def port(self, doc: dict, container_port: int) -> int:
        key = (doc["metadata"]["name"], container_port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def service_address(self, service: str, port: int) -> str:
        """HOST:PORT here for a Service's name and port, through its selector and targetPort."""
        svc = self.find("Service", service)
        spec_port = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
        assert spec_port is not None, f"Service/{service}: spec.ports has no port {port}"
        selector = svc["spec"]["selector"]
        targets = [d for d in self.docs if d["kind"] in ("Deployment", "Job", "Pod") and
                   all(pod_labels(d).get(k) == v for k, v in selector.items())]  # fmt: skip
        assert targets, f"Service/{service}: spec.selector {selector} selects no workload"
        target = spec_port.get("targetPort", port)
        for container in pod_spec(targets[0])["containers"]:
            for declared in container.get("ports", []):
                if target in (declared.get("name"), declared["containerPort"]):
                    return f"127.0.0.1:{self.port(targets[0], declared['containerPort'])}"
        raise AssertionError(f"Service/{service}: targetPort {target} is no port {name_of(targets[0])} declares")

    def map_text(self, text: str, mounts: dict[str, Path]) -> str:
        """A command-line word with the container's paths and the cluster's Service addresses made local."""
        for path in sorted(mounts, key=len, reverse=True):
            text = re.sub(rf"(?<![\w/.-]){re.escape(path)}(?=/|\b|$)", str(mounts[path]), text)
        for svc in (d for d in self.docs if d["kind"] == "Service"):
            name = svc["metadata"]["name"]
            for port in svc["spec"]["ports"]:
                address = f"{name}:{port['port']}"
                if address in text:
                    text = text.replace(address, self.service_address(name, port["port"]))
        return text

    # ---------------------------------------------------------------- processes

    def start(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> Spawned:
        executable = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
        assert executable, f"{label}: {argv[0]} is not on this machine"
        log = self.workdir / f"{label}.log"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        process = Spawned([executable, *argv[1:]], env, log)
        self.processes.append((label, process, log))
        return process

    def log(self, label: str, lines: int = 40) -> str:
        """The end of a process's output, without TensorFlow's start-up noise."""
        path = self.workdir / f"{label}.log"
        noise = ("cuda", "cuInit", "computation_placer", "absl::", "oneDNN", "cpu_feature_guard", "AVX")
        kept = [line for line in path.read_text(errors="replace").splitlines() if not any(n in line for n in noise)]
        return "\n".join(kept[-lines:])

    def stop_all(self) -> None:
        for _, process, _ in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process, _ in self.processes:
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    # ---------------------------------------------------------------- probes

    def probe(self, doc: dict, container: dict, kind: str, mounts: dict[str, Path]) -> str | None:
        """Run one of the container's probes as the kubelet would; None when it passes, else why not."""
        spec = container[kind]
        timeout = spec.get("timeoutSeconds", 1)
        where = f"{name_of(doc)} container {container['name']}: {kind}"
        if "exec" in spec:
            words = [self.map_text(w, mounts) for w in spec["exec"]["command"]]
            words = [self._local_ports(doc, w) for w in words]
            try:
                done = run_spawned(words, timeout=timeout)
            except subprocess.TimeoutExpired:
                return f"{where}.exec did not finish within timeoutSeconds {timeout}"
            return None if done.returncode == 0 else f"{where}.exec exited {done.returncode}"
        if "grpc" in spec:
            address = f"127.0.0.1:{self.port(doc, spec['grpc']['port'])}"
            service = spec["grpc"].get("service", "")
            with grpc.insecure_channel(address) as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=timeout
                    )
                except grpc.RpcError as error:
                    return f"{where}.grpc (port {spec['grpc']['port']}, service {service!r}): {error.code().name}"
            serving = answer.status == health_pb2.HealthCheckResponse.SERVING
            return None if serving else f"{where}.grpc (service {service!r}): status {answer.status}"
        if "httpGet" in spec:
            port = spec["httpGet"]["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
            url = f"http://127.0.0.1:{self.port(doc, port)}{spec['httpGet'].get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as answer:
                    return None if 200 <= answer.status < 400 else f"{where}.httpGet: HTTP {answer.status}"
            except OSError as error:
                return f"{where}.httpGet {url}: {error}"
        return f"{where}: a probe kind this rehearsal does not run"

    def _local_ports(self, doc: dict, word: str) -> str:
        # A probe runs in the pod's network namespace: 127.0.0.1:PORT there is the container's port.
        for (workload, container_port), here in self.ports.items():
            if workload == doc["metadata"]["name"]:
                word = re.sub(rf"127\.0\.0\.1([:/]){container_port}\b", rf"127.0.0.1\g<1>{here}", word)
        return word

    def wait_for(self, doc, container, kind, mounts, seconds: float, process: Spawned | None = None) -> None:
        deadline = time.monotonic() + seconds
        while True:
            why = self.probe(doc, container, kind, mounts)
            if why is None:
                return
            if process is not None and process.poll() is not None:
                pytest.fail(f"{name_of(doc)} exited {process.returncode} before its {kind} passed ({why})")
            if time.monotonic() > deadline:
                pytest.fail(f"{why} (for {seconds:.0f} s)")
            time.sleep(0.5)


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(lane: str) -> Cluster:
        made.append(Cluster(render(lane), tmp_path, _env("PT2TF_SERVE_PYTHON")))
        return made[-1]

    yield make
    for each in made:
        each.stop_all()


def fill_step(cluster: Cluster, artifacts: Path, models: Path) -> None:
    """README step 1: the volume, the fill pod, `kubectl cp` into incoming/, the pod publishes and exits 0."""
    docs = cluster.step("volume")
    assert {d["kind"] for d in docs} >= {"Namespace", "PersistentVolumeClaim", "Pod"}, [name_of(d) for d in docs]
    pod = cluster.find("Pod", "fill")
    container = pod_spec(pod)["containers"][0]
    mounts = cluster.mounts(pod, container)
    argv = [cluster.map_text(w, mounts) for w in container.get("command", []) + container["args"]]
    process = cluster.start("fill", argv)
    cluster.wait_for(pod, container, "readinessProbe", mounts, 10, process)
    incoming = mounts["/repository"] / "incoming"
    shutil.copytree(
        artifacts, incoming / "artifacts"
    )  # kubectl cp artifacts/<lane> fill:/repository/incoming/artifacts
    shutil.copytree(models / MODEL, incoming / MODEL)  # kubectl cp models/<lane>/resnet18 fill:.../incoming/resnet18
    (incoming / ".complete").touch()
    assert process.wait(30) == 0, f"Pod/fill exited {process.returncode}:\n{cluster.log('fill')}"


def serving_step(cluster: Cluster) -> tuple[dict, dict, dict[str, Path], Spawned]:
    """README step 2: TF Serving's container command, tensorflow_model_server replaced by the embedded server."""
    deployment = cluster.find("Deployment", "tfserving")
    assert deployment in cluster.step("serving"), f"{name_of(deployment)}: metadata.labels {STEP} is not serving"
    container = pod_spec(deployment)["containers"][0]
    mounts = cluster.mounts(deployment, container)
    *shell, script = container["command"] + container.get("args", [])
    assert "tensorflow_model_server" in script, f"{name_of(deployment)}: command does not run tensorflow_model_server"
    script = cluster.map_text(script, {p: h for p, h in mounts.items() if p != "/app"})
    flags_file = next((w for w in shlex.split(script.replace("$(", " ").replace(")", " ")) if w.endswith(".flags")), "")
    given = dict(re.findall(r"(?m)^--([a-z_]+)=(\S*)", Path(flags_file).read_text())) if flags_file else {}
    declared = {p["containerPort"] for p in container.get("ports", [])}
    extra = [f"--volume={host}:{path}" for path, host in mounts.items() if path != "/app"]
    for flag in ("port", "rest_api_port"):
        container_port = int(given.get(flag, 0))
        assert container_port in declared, (
            f"{name_of(deployment)} container {container['name']}: the server listens on --{flag}={container_port}, "
            f"which ports does not declare ({sorted(declared)})"
        )
        extra.append(f"--{flag}={cluster.port(deployment, container_port)}")
    server = f"{shlex.quote(str(cluster.serve_python))} -m pt2tf_serve.server"
    script = script.replace("tensorflow_model_server", server) + " " + " ".join(shlex.quote(e) for e in extra)
    pythonpath = os.pathsep.join(str(ROOT / f) for f in ("convert", "serve", "loadtest", "toolchain"))
    process = cluster.start("tfserving", [*shell, script], {"PYTHONPATH": pythonpath})
    startup = container["startupProbe"]
    budget = min(startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3), SERVER_START_SECONDS)
    cluster.wait_for(deployment, container, "startupProbe", mounts, budget, process)
    for kind in ("readinessProbe", "livenessProbe"):
        why = cluster.probe(deployment, container, kind, mounts)
        assert why is None, f"{why}\n{cluster.log('tfserving')}"
    return deployment, container, mounts, process


def locust_argv(cluster: Cluster, doc: dict, container: dict, mounts: dict[str, Path], master: str) -> list[str]:
    argv = []
    for word in container.get("command", []) + container["args"]:
        name = word.split("=", 1)[0]
        if name in SCALE:
            word = f"{name}={SCALE[name]}"
        elif name == "--master-host":
            word = "--master-host=127.0.0.1"
        argv.append(cluster.map_text(word, mounts))
    if argv[0] == "locust":
        argv[0] = str(Path(sys.executable).parent / "locust")
    port = master.rsplit(":", 1)[1]
    if "--master" in argv:
        role = ["--master-bind-host=127.0.0.1", f"--master-bind-port={port}"]
    else:
        role = [f"--master-port={port}"]
    return [argv[0], *role, *argv[1:]]


def load_step(cluster: Cluster, deployment: dict, server: dict, server_mounts: dict[str, Path]) -> None:
    """README step 3: one run, master and workers as Jobs with their own arguments; probes asked under load."""
    jobs = {d["metadata"]["name"]: d for d in cluster.step("load") if d["kind"] == "Job"}
    assert set(jobs) == {"locust-master", "locust-worker"}, f"the load step's Jobs are {sorted(jobs)}"
    master_doc, worker_doc = jobs["locust-master"], jobs["locust-worker"]
    master_container = pod_spec(master_doc)["containers"][0]
    worker_container = pod_spec(worker_doc)["containers"][0]
    master_service = next(a.split("=", 1)[1] for a in worker_container["args"] if a.startswith("--master-host="))
    svc_port = cluster.find("Service", master_service)["spec"]["ports"][0]["port"]
    master_address = cluster.service_address(master_service, svc_port)
    pythonpath = os.pathsep.join(str(ROOT / f) for f in ("convert", "serve", "loadtest", "toolchain"))
    env = {"PYTHONPATH": pythonpath}

    master_mounts = cluster.mounts(master_doc, master_container)
    master = cluster.start("locust-master", locust_argv(cluster, master_doc, master_container, master_mounts,
                                                        master_address), env)  # fmt: skip
    workers = []
    parallelism = worker_doc["spec"].get("parallelism", 1)
    for index in range(parallelism):
        mounts = cluster.mounts(worker_doc, worker_container)
        argv = locust_argv(cluster, worker_doc, worker_container, mounts, master_address)
        workers.append(cluster.start(f"locust-worker-{index}", argv, env))

    run_time = float(SCALE["--run-time"].rstrip("s"))
    deadline = time.monotonic() + float(SCALE["--expect-workers-max-wait"]) + run_time + 60
    under_load: list[str] = []
    while master.poll() is None and time.monotonic() < deadline:
        for kind in ("readinessProbe", "livenessProbe"):
            why = cluster.probe(deployment, server, kind, server_mounts)
            if why is not None:
                under_load.append(why)
        time.sleep(1)
    if master.poll() is None:
        pytest.fail(f"Job/locust-master did not end within its run:\n{cluster.log('locust-master')}")
    master_log = cluster.log("locust-master")
    expected = next(a.split("=", 1)[1] for a in master_container["args"] if a.startswith("--expect-workers="))
    assert "Gave up waiting for workers" not in master_log, (
        f"Job/locust-master: --expect-workers={expected}, but Job/locust-worker spec.parallelism {parallelism} "
        f"workers connected:\n{master_log}"
    )
    assert master.returncode == 0, f"Job/locust-master exited {master.returncode}:\n{master_log}"
    assert under_load == [], "probes failed under the workers' load:\n" + "\n".join(under_load)

    for index, worker in enumerate(workers):
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"Job/locust-worker: worker {index} still runs 30 s after the master's run ended")
        assert code == 0, (
            f"Job/locust-worker: worker {index} exited {code} after the run; with restartPolicy "
            f"{pod_spec(worker_doc).get('restartPolicy')} it would restart into a master that is gone:\n"
            f"{cluster.log(f'locust-worker-{index}')}"
        )

    reports = master_mounts["/reports"]
    for flag, name in (("--csv", "locust_stats.csv"), ("--html", "locust.html")):
        assert (reports / name).is_file(), f"Job/locust-master: {flag} wrote no {name} in {reports}"
    requests = (reports / "locust_stats.csv").read_text().splitlines()
    assert any(line.startswith(",Aggregated,") or ",Aggregated," in line for line in requests), requests


@pytest.mark.parametrize("lane", LANES)
def test_the_overlay_runs_as_the_readme_applies_it(cluster, tmp_path, lane):
    artifacts, models = _env("PT2TF_TEST_ARTIFACTS"), _env("PT2TF_TEST_MODELS")
    rehearsal = cluster(lane)
    fill_step(rehearsal, artifacts, models)
    volume = rehearsal.volume
    assert (volume / "models" / lane / MODEL / "1" / "saved_model.pb").is_file()
    assert (volume / "artifacts" / lane / "reference.npz").is_file()
    assert (volume / "reports" / lane).is_dir() and not (volume / "incoming").exists()
    # TF Serving runs as root, nobody on NFS (root squash): it reads only what others may read.
    for published in (volume / "models" / lane, volume / "artifacts" / lane):
        unreadable = [str(p) for p in [published, *published.rglob("*")] if not p.stat().st_mode & 0o004]
        assert unreadable == [], f"Pod/fill (fill.sh) published files others cannot read: {unreadable[:3]}"
    deployment, server, mounts, _ = serving_step(rehearsal)
    compose_healthcheck_passes(rehearsal, deployment)
    load_step(rehearsal, deployment, server, mounts)


def compose_healthcheck_passes(cluster: Cluster, deployment: dict) -> None:
    """docker/compose.yaml's tfserving healthcheck, its command as written, against the server's gRPC port."""
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    check = compose["services"]["tfserving"]["healthcheck"]
    command = check["test"][1:]  # after CMD
    grpc_port = cluster.port(deployment, 8500)
    command = [re.sub(r"127\.0\.0\.1/8500\b", f"127.0.0.1/{grpc_port}", w) for w in command]
    timeout = float(check["timeout"].rstrip("s"))
    done = run_spawned(command, timeout=timeout + 5)
    assert done.returncode == 0, f"docker/compose.yaml services.tfserving.healthcheck.test failed: {done.stderr!r}"


def test_a_read_only_subpath_the_fill_step_did_not_make_is_named(cluster):
    # Applied before the fill pod ran, as `kubectl apply -k` without the README's steps would do.
    rehearsal = cluster(LANES[0])
    with pytest.raises(AssertionError, match=r"Deployment/tfserving container tfserving: volumeMounts\[1\].subPath"):
        serving_step(rehearsal)
