"""The user's own model: `--model package.module:factory` (a function returning an `nn.Module`), its weights
(a state_dict file, or seeded) and a preprocessing spec, a small TOML file:

    name = "tiny_shuffle"          # the served name (default: the factory's name)
    resize = 256                   # the shorter side, before the center crop
    crop = 224                     # the serving contract's input is [batch, 3, 224, 224]
    interpolation = "bilinear"     # or "bicubic" (antialiased, as torchvision's transforms on PIL images)
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    labels = "labels.txt"          # one class name per line, relative to this file

Without `labels`, a model with 1000 outputs answers with ImageNet's class names (torchvision's list); any other
class count needs the file: invented names ("class_3") would look like answers to the clients that show them.
Everything here is read and checked before the export does any work, and each error names what to change.
"""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification  # what torchvision's weights' transforms() build

from .metrics import distinct_top1_needed
from .model import (
    SEEDED,
    ModelError,
    Weights,
    WeightsError,
    calibrate_classifier,
    load_state_dict,
    seed_normalization,
)
from .preprocessing import INPUT_SIZE, INTERPOLATIONS, NUM_CLASSES, TOP_K, Preprocessing

REQUIRED = ("resize", "crop", "interpolation", "mean", "std")
OPTIONAL = ("name", "labels", "antialias")
# TF Serving's REST paths take a model name up to a ':' or '/'; it is also the repository's folder name.
_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_EXAMPLE = (
    'resize = 256\ncrop = 224\ninterpolation = "bilinear"\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]'
)


class SpecError(ValueError):
    """The preprocessing spec cannot be used; the message names the field and what to write."""


def is_factory(model: str) -> bool:
    """A --model value that names the user's factory (package.module:function) rather than a torchvision name."""
    return ":" in model


@dataclass(frozen=True)
class UserSpec:
    """What the spec file says: the served name, the preprocessing, the class names (None: ImageNet's if 1000)."""

    name: str
    preprocessing: Preprocessing
    labels: list[str] | None
    labels_source: str  # the labels file, or what stands in for it

    def transform(self) -> Callable:
        """torchvision's own inference transform with these settings (what its weights' transforms() return)."""
        spec = self.preprocessing
        return ImageClassification(
            crop_size=spec.crop,
            resize_size=spec.resize,
            mean=spec.mean,
            std=spec.std,
            interpolation=InterpolationMode(spec.interpolation),
            antialias=spec.antialias,
        )


def load_factory(reference: str) -> Callable[[], nn.Module]:
    """The function `package.module:factory` names, imported; an error that says what to fix otherwise."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ModelError(f"--model {reference}: write package.module:factory (a function that returns an nn.Module)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"--model {reference}: cannot import {module_name} ({type(exc).__name__}: {exc}); put the folder that "
            f"holds it on PYTHONPATH (searched: {', '.join(p or '.' for p in sys.path[:4])}, ...)"
        ) from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ModelError(f"--model {reference}: {module_name} ({module.__file__}) has no {attribute}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelError(
            f"--model {reference}: {attribute} is a {type(factory).__name__}, not a function; name a function "
            "that returns the nn.Module"
        )
    return factory


def call_factory(reference: str, factory: Callable[[], nn.Module]) -> nn.Module:
    """`factory()`, checked to be an nn.Module, in eval mode."""
    try:
        network = factory()
    except Exception as exc:  # the user's code: any failure is theirs to read
        raise ModelError(f"--model {reference}: calling it failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(network, nn.Module):
        raise ModelError(
            f"--model {reference}: returned a {type(network).__name__}, not a torch.nn.Module; the factory must "
            "return the model (e.g. `return MyNet(num_classes=10)`)"
        )
    return network.eval()


def load_spec(path: Path, reference: str) -> UserSpec:
    """Read and check the spec file (see the module's docstring); the labels file too."""
    if not path.is_file():
        raise SpecError(f"--spec {path}: no such file; write one with these fields:\n{_EXAMPLE}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"--spec {path}: not TOML ({exc})") from None
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise SpecError(f"--spec {path}: missing {', '.join(missing)}; a spec gives all of:\n{_EXAMPLE}")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise SpecError(f"--spec {path}: unknown field {', '.join(unknown)} (fields: {', '.join(REQUIRED + OPTIONAL)})")
    for key in ("resize", "crop"):
        if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] <= 0:
            raise SpecError(f"--spec {path}: {key} = {data[key]!r}; a positive whole number of pixels")
    if data["crop"] != INPUT_SIZE:
        raise SpecError(
            f"--spec {path}: crop = {data['crop']}; the serving contract's input is [batch, 3, {INPUT_SIZE}, "
            f"{INPUT_SIZE}], so crop = {INPUT_SIZE} (resize may be anything ≥ {INPUT_SIZE})"
        )
    if data["resize"] < data["crop"]:
        raise SpecError(f"--spec {path}: resize = {data['resize']} is smaller than crop = {data['crop']}")
    if data["interpolation"] not in INTERPOLATIONS:
        raise SpecError(f"--spec {path}: interpolation = {data['interpolation']!r}; one of {', '.join(INTERPOLATIONS)}")
    for key in ("mean", "std"):
        value = data[key]
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int | float) for v in value)):
            raise SpecError(f"--spec {path}: {key} = {value!r}; three numbers, one per RGB channel")
    if min(data["std"]) <= 0:
        raise SpecError(f"--spec {path}: std = {data['std']}; each must be positive")
    name = data.get("name", reference.rpartition(":")[2].rpartition(".")[2])
    if not isinstance(name, str) or not _SERVED_NAME.fullmatch(name):
        raise SpecError(f"--spec {path}: name = {name!r}; letters, digits, '_', '.', '-' (it is the served name)")
    labels, labels_source = (
        None,
        f"ImageNet's {NUM_CLASSES} names (torchvision), for a model with {NUM_CLASSES} outputs",
    )
    if "labels" in data:
        labels_path = path.parent / str(data["labels"])
        labels, labels_source = read_labels(labels_path, path), str(labels_path)
    preprocessing = Preprocessing(
        f"spec {path.name}", data["resize"], data["crop"], data["interpolation"], bool(data.get("antialias", True)),
        tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]),
    )  # fmt: skip
    return UserSpec(name, preprocessing, labels, labels_source)


def read_labels(path: Path, spec: Path) -> list[str]:
    """One class name per line (trailing blank lines ignored)."""
    if not path.is_file():
        raise SpecError(f"--spec {spec}: labels = {path}: no such file (the path is relative to the spec)")
    names = [line.strip() for line in path.read_text().splitlines()]
    while names and not names[-1]:
        names.pop()
    blank = [str(i + 1) for i, name in enumerate(names) if not name]
    if blank:
        raise SpecError(f"{path}: line {', '.join(blank[:5])} is blank; one class name per line")
    if not names:
        raise SpecError(f"{path}: holds no class names; one per line")
    return names


def check_state_dict(network: nn.Module, state: dict[str, torch.Tensor], weights: str, reference: str) -> None:
    """Refuse weights whose keys or shapes differ from the module's, naming a few of each."""
    own = network.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [f"{key} {list(state[key].shape)} ≠ {list(own[key].shape)}" for key in own
              if key in state and state[key].shape != own[key].shape]  # fmt: skip
    if missing or unexpected or shapes:
        found = [f"{len(items)} {what} (e.g. {', '.join(items[:3])})" for items, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")) if items]  # fmt: skip
        raise WeightsError(
            f"--weights {weights}: not a state_dict of what {reference} returns: {'; '.join(found)}. Save it from "
            "the same factory with torch.save(model.state_dict(), path)"
        )


def class_names(spec: UserSpec, num_classes: int, reference: str) -> list[str]:
    """The served class names: the spec's labels file, or ImageNet's for a 1000-output model."""
    if num_classes < TOP_K:
        raise ModelError(
            f"--model {reference}: answers {num_classes} classes; predict_images answers the top {TOP_K}, so the "
            f"model needs at least {TOP_K} outputs"
        )
    if spec.labels is None:
        if num_classes != NUM_CLASSES:
            raise SpecError(
                f"--model {reference} answers {num_classes} classes: give the spec a labels file with "
                f'{num_classes} lines (labels = "labels.txt"); ImageNet\'s names stand in only for {NUM_CLASSES}'
            )
        return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if len(spec.labels) != num_classes:
        raise SpecError(
            f"{spec.labels_source}: {len(spec.labels)} class names for a model that answers {num_classes} classes; "
            "one name per output, in output order"
        )
    return spec.labels


def build_user_model(
    reference: str, spec: UserSpec, weights: str, seed: int, calibration_inputs: torch.Tensor
) -> tuple[nn.Module, Weights, list[str]]:
    """The user's model in eval mode with `weights` (a state_dict file, or seeded), and its class names.

    Seeded: the factory's own initialisation under `seed`, normalization layers made far from identity and
    the classifier calibrated on the reference inputs, as for torchvision models."""
    factory = load_factory(reference)
    torch.manual_seed(seed)
    network = call_factory(reference, factory)
    if weights == SEEDED:
        seed_normalization(network, torch.Generator().manual_seed(seed))
        source = Weights(SEEDED, seed)
    else:
        path = Path(weights)
        state = load_state_dict(path)
        check_state_dict(network, state, weights, reference)
        network.load_state_dict(state)
        from .artifacts import sha256

        source = Weights(str(path), sha256=sha256(path))
    with torch.no_grad():
        try:
            logits = network(calibration_inputs[:2])
        except Exception as exc:
            raise ModelError(
                f"--model {reference}: fails on a [2, 3, {INPUT_SIZE}, {INPUT_SIZE}] batch: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"--model {reference}: answers {shape}; the contract needs logits [batch, classes]")
    num_classes = int(logits.shape[1])
    labels = class_names(spec, num_classes, reference)
    if weights == SEEDED:
        calibration = calibrate_classifier(
            network,
            calibration_inputs,
            num_classes=num_classes,
            distinct=distinct_top1_needed(num_classes),
            std=spec.preprocessing.std,
        )
        source = Weights(SEEDED, seed, calibration=calibration)
    return network.eval(), source, labels
