"""Every lane of toolchain.toml has a serving image, its CI jobs, a Dockerfile target and a
Kubernetes overlay (lane_consistency.py), and a broken copy of each is caught by name."""

from __future__ import annotations

import shutil

import pytest
from checkrun import ROOT, replace_once
from lane_consistency import DOCKERFILE, OVERLAYS, WORKFLOW, lane_problems

FILES = ("toolchain.toml", str(WORKFLOW), str(DOCKERFILE), str(OVERLAYS))


def test_every_lane_has_its_image_jobs_target_and_overlay():
    assert lane_problems(ROOT) == []


def test_a_lane_added_to_the_matrix_alone_is_reported_everywhere(copy_of):
    root = copy_of(*FILES)
    toml = root / "toolchain.toml"
    section = toml.read_text().split("[lanes.latest]", 1)[1]
    toml.write_text(toml.read_text() + "\n[lanes.next]" + section)
    problems = "\n".join(lane_problems(root))
    for job in ("lane", "serving", "containers"):
        assert f"lane 'next': lanes.yml job '{job}' does not run it" in problems, problems
    assert "lane 'next': docker/Dockerfile has no target 'convert-next'" in problems
    assert "lane 'next': no Kubernetes overlay" in problems


@pytest.mark.parametrize(
    ("where", "old", "new", "message"),
    [
        (str(WORKFLOW), "lane: [onnx-tf, onnx2tf, latest]\n    env:\n      LANE: ${{ matrix.lane }}\n      OUT:",
         "lane: [onnx-tf, onnx2tf]\n    env:\n      LANE: ${{ matrix.lane }}\n      OUT:",
         "lane 'latest': lanes.yml job 'serving' does not run it"),
        (str(WORKFLOW), "    needs: lane\n", "", "job 'serving' must need 'lane'"),
        (str(WORKFLOW), "    if: ${{ !cancelled() }}\n", "", "one failed lane skips every serving job"),
        ("toolchain.toml", 'serving_image = "tensorflow/serving:2.15.1"', 'serving_image = "tensorflow/serving:latest"',
         "lane 'onnx-tf': serving_image 'tensorflow/serving:latest' in toolchain.toml is not a released"),
        (str(DOCKERFILE), "FROM runtime AS convert-onnx2tf\nCOPY --from=env-onnx2tf",
         "FROM runtime AS convert-onnx2tf\nCOPY --from=env-latest", "target 'convert-onnx2tf' installs env 'latest'"),
        (str(OVERLAYS / "onnx-tf/kustomization.yaml"), 'newTag: "2.15.1"', 'newTag: "2.19.0"',
         "serves tensorflow/serving:2.19.0, toolchain.toml says tensorflow/serving:2.15.1"),
        (str(OVERLAYS / "latest/kustomization.yaml"), "value: models/latest", "value: models/onnx2tf",
         "lane 'latest': docker/k8s/overlays/latest/kustomization.yaml does not mount models/latest"),
    ],
    ids=["serving-job-lacks-a-lane", "serving-before-convert", "one-failed-lane-skips-serving", "moving-image-tag",
         "target-with-another-env", "overlay-image-differs", "overlay-mounts-another-lane"],
)  # fmt: skip
def test_each_broken_copy_is_named(copy_of, where, old, new, message):
    root = copy_of(*FILES)
    replace_once(root / where, old, new)
    problems = "\n".join(lane_problems(root))
    assert message in problems, problems


def test_a_missing_overlay_and_a_stray_one_are_named(copy_of):
    root = copy_of(*FILES)
    shutil.move(root / OVERLAYS / "onnx2tf", root / OVERLAYS / "onnx2tf-old")
    problems = "\n".join(lane_problems(root))
    assert "lane 'onnx2tf': no Kubernetes overlay" in problems, problems
    assert "an overlay for lane 'onnx2tf-old', which toolchain.toml does not have" in problems, problems
