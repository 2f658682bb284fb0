"""Every lane of toolchain.toml has what it takes to ship: a serving image, CI jobs, a Dockerfile
target and a Kubernetes overlay, and nothing names a lane the matrix does not have.

`lane_problems(root)` reads a checkout (or a copy of one) and returns one message per gap,
each naming the lane, the file and what to add.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pt2tf_toolchain.matrix import Matrix, load_matrix

WORKFLOW = Path(".github/workflows/lanes.yml")
DOCKERFILE = Path("docker/Dockerfile")
OVERLAYS = Path("docker/k8s/overlays")
# Jobs that run once per lane: convert+verify, the real serving image, the stage images.
LANE_JOBS = ("lane", "serving", "containers")
SERVING_IMAGE = re.compile(r"^tensorflow/serving:(\d+\.\d+\.\d+)$")
_FROM = re.compile(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE | re.MULTILINE)


def lane_problems(root: Path) -> list[str]:
    """Every way the lanes of `root`/toolchain.toml and the deployment files disagree."""
    matrix = load_matrix(root / "toolchain.toml")
    return [
        *_serving_images(matrix),
        *_workflow(matrix, root / WORKFLOW),
        *_dockerfile(matrix, root, DOCKERFILE),
        *_overlays(matrix, root, OVERLAYS),
    ]


def _serving_images(matrix: Matrix) -> list[str]:
    return [
        f"lane '{lane.name}': serving_image '{lane.serving_image}' in toolchain.toml is not a released "
        "tensorflow/serving:X.Y.Z tag (a moving tag like latest cannot be reproduced)"
        for lane in matrix.lanes.values()
        if not SERVING_IMAGE.match(lane.serving_image)
    ]


def _workflow(matrix: Matrix, path: Path) -> list[str]:
    jobs = (yaml.safe_load(path.read_text()) or {}).get("jobs") or {}
    problems = []
    for name in LANE_JOBS:
        job = jobs.get(name)
        if job is None:
            problems.append(f"{path.name}: no job '{name}' (it runs once per lane)")
            continue
        listed = ((job.get("strategy") or {}).get("matrix") or {}).get("lane") or []
        for lane in matrix.lanes:
            if lane not in listed:
                problems.append(f"lane '{lane}': {path.name} job '{name}' does not run it — add it to its matrix")
        for extra in sorted(set(listed) - set(matrix.lanes)):
            problems.append(f"{path.name} job '{name}' runs lane '{extra}', which toolchain.toml does not have")
    serving = jobs.get("serving") or {}
    needs = serving.get("needs") or []
    if "lane" not in ([needs] if isinstance(needs, str) else needs):
        problems.append(f"{path.name}: job 'serving' must need 'lane' (it serves the model that job converted)")
    condition = str(serving.get("if", ""))
    if "!cancelled()" not in condition and "always()" not in condition:
        problems.append(
            f"{path.name}: job 'serving' needs the whole 'lane' matrix, so one failed lane skips every serving "
            "job — give it `if: ${{ !cancelled() }}`"
        )
    return problems


def _dockerfile(matrix: Matrix, root: Path, path: Path) -> list[str]:
    text = (root / path).read_text()
    stages = {alias: text_of_stage(text, alias) for _, alias in _FROM.findall(text) if alias}
    problems = []

    def installs(target: str) -> str | None:
        copied = re.search(r"COPY --from=(\S+) /opt/venv", stages.get(target, ""))
        if not copied:
            return None
        found = re.search(r"pt2tf_toolchain install (\S+) ", stages.get(copied.group(1), ""))
        return found.group(1) if found else None

    for lane in matrix.lanes.values():
        for target, stage in ((f"convert-{lane.name}", "convert"), ("export", "export")):
            want = lane.env_for(stage)
            if target not in stages:
                problems.append(
                    f"lane '{lane.name}': {path} has no target '{target}' — add one installing env '{want}'"
                )
            elif installs(target) != want:
                problems.append(
                    f"lane '{lane.name}': {path} target '{target}' installs env '{installs(target)}', "
                    f"but the lane runs {stage} in env '{want}'"
                )
        if lane.env_for("verify") != lane.env_for("convert"):
            problems.append(
                f"lane '{lane.name}': verify runs in env '{lane.env_for('verify')}', convert in "
                f"'{lane.env_for('convert')}'; the convert-{lane.name} image runs both — give verify its own target"
            )
    for alias in stages:
        if alias.startswith("convert-") and alias.removeprefix("convert-") not in matrix.lanes:
            problems.append(f"{path}: target '{alias}' is for a lane toolchain.toml does not have")
    return problems


def text_of_stage(text: str, alias: str) -> str:
    """The lines of one build stage of a Dockerfile, from its FROM to the next."""
    start = re.search(rf"^FROM\s+\S+\s+AS\s+{re.escape(alias)}\s*$", text, re.IGNORECASE | re.MULTILINE)
    end = _FROM.search(text, start.end())
    return text[start.start() : end.start() if end else len(text)]


def _overlays(matrix: Matrix, root: Path, folder: Path) -> list[str]:
    problems = []
    for lane in matrix.lanes.values():
        path = folder / lane.name / "kustomization.yaml"
        if not (root / path).is_file():
            problems.append(f"lane '{lane.name}': no Kubernetes overlay {path} — copy another lane's and adapt it")
            continue
        doc = yaml.safe_load((root / path).read_text()) or {}
        tag = SERVING_IMAGE.match(lane.serving_image)
        images = {i.get("name"): str(i.get("newTag")) for i in doc.get("images") or []}
        if tag and images.get("tensorflow/serving") != tag.group(1):
            problems.append(
                f"lane '{lane.name}': {path} serves tensorflow/serving:{images.get('tensorflow/serving')}, "
                f"toolchain.toml says {lane.serving_image}"
            )
        if doc.get("namespace") != f"pt2tf-{lane.name}":
            problems.append(f"lane '{lane.name}': {path} must deploy into namespace pt2tf-{lane.name}")
        patches = yaml.safe_dump(doc.get("patches") or [])
        for folder_on_volume in (f"models/{lane.name}", f"artifacts/{lane.name}", f"reports/{lane.name}"):
            if folder_on_volume not in patches:
                problems.append(f"lane '{lane.name}': {path} does not mount {folder_on_volume} from the repository")
    for extra in sorted(p.name for p in (root / folder).iterdir() if p.is_dir()) if (root / folder).is_dir() else []:
        if extra not in matrix.lanes:
            problems.append(f"{folder / extra}: an overlay for lane '{extra}', which toolchain.toml does not have")
    return problems
