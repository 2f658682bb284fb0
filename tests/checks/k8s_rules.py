"""Rules over rendered Kubernetes manifests, for mistakes a schema cannot see (README "Past one machine").

Each rule takes the rendered documents and returns one message per breach, naming the resource,
the container and the field. tests/checks/test_kubernetes_rules.py runs them on every overlay and
on copies that bring back the defects of issue 16.
"""

from __future__ import annotations

import re
import shlex

Docs = list[dict]


def name_of(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _pod_spec(doc: dict) -> dict | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return doc["spec"]["template"]["spec"]
    return None


def workloads(docs: Docs):
    """(doc, pod spec, container) for every container of every workload."""
    for doc in docs:
        spec = _pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            yield doc, spec, container


def hpa_targets_set_no_replicas(docs: Docs) -> list[str]:
    """A Deployment an HPA scales must not set spec.replicas: every apply would reset the HPA's count."""
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    problems = []
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = found.get((ref["kind"], ref["name"]))
        if target is not None and "replicas" in target["spec"]:
            problems.append(
                f"{name_of(target)}: spec.replicas is {target['spec']['replicas']}, but {name_of(hpa)} scales it; "
                "every `kubectl apply` resets the count to that — leave replicas out"
            )
    return problems


def _selected_by(service: dict, docs: Docs) -> list[dict]:
    selector = service["spec"].get("selector") or {}
    chosen = []
    for doc in docs:
        if _pod_spec(doc) is None:
            continue
        labels = (doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]).get("labels", {})
        if selector and all(labels.get(k) == v for k, v in selector.items()):
            chosen.append(doc)
    return chosen


def bounded_runs_are_jobs(docs: Docs) -> list[str]:
    """Whatever serves a Job's run (a Locust worker of a master that is a Job) is a Job too, not restarted for ever."""
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    problems = []
    for doc, _, container in workloads(docs):
        for arg in container.get("args", []) + container.get("command", []):
            match = re.fullmatch(r"--master-host=(\S+)", arg)
            if not match or match.group(1) not in services:
                continue
            masters = [m for m in _selected_by(services[match.group(1)], docs) if m["kind"] == "Job"]
            if masters and doc["kind"] != "Job":
                problems.append(
                    f"{name_of(doc)}: kind is {doc['kind']}, but its master ({match.group(1)}) is "
                    f"{name_of(masters[0])}, which ends; restarted after it, the workers find no master "
                    "and crash-loop — make it a Job"
                )
    return problems


def configmap_files(docs: Docs, spec: dict, container: dict) -> dict[str, str]:
    """Container path → text of every ConfigMap file mounted in `container`."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        source = volumes.get(mount["name"], {}).get("configMap")
        if source and source["name"] in maps:
            for key, text in maps[source["name"]].items():
                files[f"{mount['mountPath'].rstrip('/')}/{key}"] = text
    return files


def command_line(container: dict) -> list[str]:
    """The container's command and args, shell scripts split into words."""
    words = []
    for part in container.get("command", []) + container.get("args", []):
        try:
            words += shlex.split(part) if " " in part else [part]
        except ValueError:
            words.append(part)
    return words


def what_it_reads(docs: Docs, spec: dict, container: dict) -> str:
    """The command line and the text of every mounted config file it names, and those files name, in turn."""
    files = configmap_files(docs, spec, container)
    text = "\n".join(command_line(container))
    seen: set[str] = set()
    while True:
        named = [path for path in files if path not in seen and path in text]
        if not named:
            return text
        for path in named:
            seen.add(path)
            text += "\n" + files[path]


def flags(docs: Docs, spec: dict, container: dict) -> dict[str, str]:
    """`--name=value` flags on the command line or in a flags file it reads; later ones win, as for TF Serving."""
    return dict(re.findall(r"(?m)(?:^|\s)--([a-z_]+)=(\S*)", what_it_reads(docs, spec, container)))


def _port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    return None


def liveness_apart_from_predict(docs: Docs) -> list[str]:
    """No liveness probe may wait in a thread pool predict requests hold (TF Serving's REST or gRPC sync threads)."""
    problems = []
    for doc, spec, container in workloads(docs):
        probe = container.get("livenessProbe")
        given = flags(docs, spec, container)
        if not probe or "rest_api_port" not in given:
            continue  # not a model server
        rest, grpc_port = int(given["rest_api_port"]), int(given.get("port", 8500))
        where = f"{name_of(doc)} container {container['name']}: livenessProbe"
        if "httpGet" in probe and _port_number(container, probe["httpGet"]["port"]) == rest:
            problems.append(
                f"{where}.httpGet.port {probe['httpGet']['port']} is the REST port, whose "
                f"--rest_api_num_threads={given.get('rest_api_num_threads', '?')} threads predict requests hold: "
                "under load the probe times out and restarts a serving pod — use a grpc probe on the health service"
            )
        elif "exec" in probe and re.search(rf"\b({rest}|{grpc_port})\b", " ".join(probe["exec"]["command"])):
            problems.append(
                f"{where}.exec.command calls the server's own ports, whose threads predict requests hold — "
                "use a grpc probe on the health service"
            )
        elif "grpc" in probe:
            if probe["grpc"]["port"] != grpc_port:
                problems.append(f"{where}.grpc.port {probe['grpc']['port']} is not the gRPC port ({grpc_port})")
            elif given.get("enable_grpc_healthcheck_service") != "true":
                problems.append(
                    f"{where}.grpc asks the health service, but --enable_grpc_healthcheck_service=true is not "
                    "among the server's flags: it answers UNIMPLEMENTED"
                )
    return problems


def mount_paths_are_named(docs: Docs) -> list[str]:
    """Every path a container mounts is one its command line names (directly, or in a config file it names)."""
    problems = []
    for doc, spec, container in workloads(docs):
        text = what_it_reads(docs, spec, container)
        for index, mount in enumerate(container.get("volumeMounts", [])):
            path = mount["mountPath"].rstrip("/")
            if not re.search(rf"(?<![\w/.-]){re.escape(path)}(?=/|\s|$|['\"])", text):
                problems.append(
                    f"{name_of(doc)} container {container['name']}: volumeMounts[{index}].mountPath {path} is "
                    "named by no flag or file the command reads — the mount and the flags disagree"
                )
    return problems


RULES = {
    "hpa-target-sets-no-replicas": hpa_targets_set_no_replicas,
    "bounded-run-is-jobs": bounded_runs_are_jobs,
    "liveness-apart-from-predict": liveness_apart_from_predict,
    "mount-paths-named-by-flags": mount_paths_are_named,
}
