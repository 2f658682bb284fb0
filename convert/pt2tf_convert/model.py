"""The PyTorch model: torchvision ResNet18 in eval mode, with seeded, user or cached weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models import ResNet18_Weights, resnet18

SEEDED = "seeded"


class WeightsError(ValueError):
    """The weights asked for cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Weights:
    """Where the model's parameters came from, for the manifest."""

    source: str  # "seeded", a torchvision weights name, or a file path
    seed: int | None = None


def seeded_resnet18(seed: int = 0) -> torch.nn.Module:
    """ResNet18 with seeded weights and BatchNorm statistics that are far from identity.

    Freshly built BatchNorm layers have mean 0, variance 1, scale 1 and shift 0, so
    a conversion that drops or mis-folds them would still match. Here the scales and
    shifts are random, and the running statistics are measured on seeded data flowing
    through those layers, then shifted and rescaled at random, so every BN layer changes
    its input and a BN bug shows up as a parity failure.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = resnet18(weights=None)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batchnorms:
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5, generator=generator))
            bn.bias.copy_(torch.empty_like(bn.bias).normal_(0.0, 0.2, generator=generator))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224, generator=generator))
        for bn in batchnorms:
            bn.momentum = 0.1
            # Zero-mean noise through zero-mean convolutions leaves running means near 0:
            # shift and rescale the measured statistics so none is close to the identity.
            std = bn.running_var.sqrt()
            bn.running_mean.add_(torch.empty_like(std).normal_(0.0, 0.3, generator=generator) * std)
            bn.running_var.mul_(torch.empty_like(std).uniform_(0.5, 2.0, generator=generator))
    return model.eval()


def _cached_torchvision_file(name: str) -> Path:
    try:
        weights = ResNet18_Weights[name]
    except KeyError:
        known = ", ".join(w.name for w in ResNet18_Weights)
        raise WeightsError(
            f"--weights {name}: not a file, and not a torchvision ResNet18 weights name ({known}); "
            "pass a path to a state_dict file, one of those names, or 'seeded'"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise WeightsError(
            f"--weights {name}: torchvision's file is not in the local cache. This project never "
            f"downloads at run time: fetch {weights.url} on a connected machine and put it at {path} "
            "(or set TORCH_HOME), or pass --weights PATH to your own state_dict file"
        )
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict with weights_only=True (no arbitrary code from pickles)."""
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file it cannot read safely
        raise WeightsError(
            f"--weights {path}: cannot be read as a weights-only PyTorch file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}). Save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state_dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"--weights {path}: holds a {type(state).__name__}, not a state_dict of tensors")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from DataParallel
    return state


def build_model(weights: str = SEEDED, seed: int = 0) -> tuple[torch.nn.Module, Weights]:
    """ResNet18 in eval mode from `weights`: 'seeded', a state_dict path, or a torchvision name."""
    if weights == SEEDED:
        return seeded_resnet18(seed), Weights(SEEDED, seed)
    path = Path(weights)
    source = str(path)
    if not path.exists() and "/" not in weights and not weights.endswith((".pt", ".pth")):
        path = _cached_torchvision_file(weights)
        source = f"torchvision:{weights}"
    state = load_state_dict(path)
    model = resnet18(weights=None)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"--weights {path}: not a torchvision ResNet18 state_dict "
            f"(missing {len(result.missing_keys)} keys, e.g. {result.missing_keys[:3]}; "
            f"unexpected {len(result.unexpected_keys)}, e.g. {result.unexpected_keys[:3]})"
        )
    return model.eval(), Weights(source)
