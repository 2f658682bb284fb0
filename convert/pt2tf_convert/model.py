"""The PyTorch model: torchvision ResNet18 in eval mode, with seeded, user or torchvision weights."""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.models import ResNet18_Weights, resnet18

from .artifacts import sha256

SEEDED = "seeded"
SEEDED_NOTE = "seeded weights: labels are not ImageNet predictions"
# Standard deviation of the calibrated seeded classifier's logits on the calibration inputs:
# about what ImageNet-trained ResNet18 gives on natural photos.
CALIBRATED_LOGIT_STD = 1.0
DOWNLOAD_TIMEOUT_S = 30
# torchvision's file names end in the first hex digits of the file's sha256: resnet18-f37072fd.pth
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


class WeightsError(ValueError):
    """The weights asked for cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Weights:
    """Where the model's parameters came from, for the manifests and reports."""

    source: str  # "seeded", "torchvision:<NAME>", or a file path
    seed: int | None = None
    sha256: str | None = None  # of the weights file; None for seeded weights
    calibration: dict = field(default_factory=dict)  # how the seeded classifier was calibrated

    @property
    def is_seeded(self) -> bool:
        return self.source == SEEDED

    def describe(self) -> str:
        """One line that says which weights the answers come from, for every report and answer."""
        if self.is_seeded:
            return f"{SEEDED_NOTE} (seed {self.seed})"
        return f"{self.source} (sha256 {self.sha256})"


def _penultimate(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """ResNet18's pooled 512-wide features, the input of its `fc` layer, in float64."""
    body = torch.nn.Sequential(*list(model.children())[:-1])  # everything up to and with avgpool
    with torch.no_grad():
        return torch.flatten(body(inputs), 1).double()


def calibrate_classifier(model: torch.nn.Module, inputs: torch.Tensor, logit_std: float = CALIBRATED_LOGIT_STD) -> dict:
    """Fold a whitening of the penultimate features, measured on `inputs`, into the `fc` layer.

    A randomly initialised ResNet gives every input nearly the same answer: its pooled
    features are ReLU outputs whose common mean is ~8× larger than what varies between
    inputs, so the random `fc` layer's answer is decided by that mean. Here the features'
    mean is removed and the directions in which the calibration inputs differ are scaled to
    unit variance (PCA whitening, restricted to the subspace the inputs span), then the
    seeded `fc` weights are applied and scaled so the logits have standard deviation
    `logit_std`. The result is still one `Linear` layer: fc(x) = W'x + b' with
    W' = α·W·V·diag(1/σ)·Vᵀ and b' = −W'μ. Which class each input gets is still decided by
    the seeded weights; only the features it reads are standardised.
    """
    features = _penultimate(model, inputs)
    mean = features.mean(dim=0)
    _, singular, right = torch.linalg.svd(features - mean, full_matrices=False)
    rank = int((singular > singular[0] * 1e-6).sum())
    basis = right[:rank].T  # [512, rank]
    sigma = singular[:rank] / (len(features) - 1) ** 0.5  # per-direction standard deviation
    weight = model.fc.weight.detach().double() @ (basis / sigma) @ basis.T
    spread = ((features - mean) @ weight.T).std()
    weight = weight * (logit_std / spread)
    with torch.no_grad():
        model.fc.weight.copy_(weight.float())
        model.fc.bias.copy_((-(weight @ mean)).float())
    return {
        "method": "penultimate-feature PCA whitening folded into fc",
        "inputs": len(features),
        "rank": rank,
        "feature_mean_norm": round(float(mean.norm()), 4),
        "feature_spread": [round(float(s), 4) for s in sigma],
        "logit_std": logit_std,
    }


def seeded_resnet18(seed: int = 0) -> torch.nn.Module:
    """ResNet18 with seeded weights and BatchNorm statistics that are far from identity.

    Freshly built BatchNorm layers have mean 0, variance 1, scale 1 and shift 0, so
    a conversion that drops or mis-folds them would still match. Here the scales and
    shifts are random, and the running statistics are measured on seeded data flowing
    through those layers, then shifted and rescaled at random, so every BN layer changes
    its input and a BN bug shows up as a parity failure.

    Its classifier is still the random one, which gives nearly every input the same answer;
    `build_model` calibrates it (`calibrate_classifier`) on the reference inputs.
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


def torchvision_weights(name: str) -> ResNet18_Weights:
    try:
        return ResNet18_Weights[name]
    except KeyError:
        known = ", ".join(w.name for w in ResNet18_Weights)
        raise WeightsError(
            f"--weights {name}: not a file, and not a torchvision ResNet18 weights name ({known}); "
            "pass a path to a state_dict file, one of those names, or 'seeded'"
        ) from None


def hub_checkpoint(url: str) -> Path:
    """Where torchvision keeps the file of `url`: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def fetch_torchvision_file(name: str, url: str | None = None) -> Path:
    """The torch hub cache's copy of torchvision's weights file `name`, downloaded if absent.

    The download is torchvision's own (torch.hub.download_url_to_file), which checks the
    file's sha256 against the prefix in its name and keeps nothing on a mismatch. `url`
    replaces torchvision's address (tests serve a file on loopback; never the network).
    """
    url = url or torchvision_weights(name).url
    path = hub_checkpoint(url)
    if path.is_file():
        return path
    match = _HASH_PREFIX.search(path.name)
    print(f"--weights {name}: not in the torch hub cache; downloading {url} → {path}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None, progress=False)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"--weights {name}: not in the torch hub cache and the download failed ({reason}); "
            f"on a connected machine fetch {url} and put it at {path} (or set TORCH_HOME)"
        ) from None
    except RuntimeError as exc:  # torch.hub's sha256 prefix check
        raise WeightsError(f"--weights {name}: the downloaded file was refused and deleted: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
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


def build_model(
    weights: str = SEEDED, seed: int = 0, calibration_inputs: torch.Tensor | None = None
) -> tuple[torch.nn.Module, Weights]:
    """ResNet18 in eval mode from `weights`: 'seeded', a state_dict path, or a torchvision name.

    Seeded weights get their classifier calibrated on `calibration_inputs` when given;
    a user's or torchvision's weights are used exactly as they are.
    """
    if weights == SEEDED:
        model = seeded_resnet18(seed)
        calibration = calibrate_classifier(model, calibration_inputs) if calibration_inputs is not None else {}
        return model, Weights(SEEDED, seed, calibration=calibration)
    path = Path(weights)
    source = str(path)
    if not path.exists() and os.sep not in weights and not weights.endswith((".pt", ".pth")):
        path = fetch_torchvision_file(weights)
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
    digest = sha256(path)
    match = _HASH_PREFIX.search(path.name)
    if source.startswith("torchvision:") and match and not digest.startswith(match.group(1)):
        print(
            f"warning: {path}'s sha256 {digest[:12]}… does not start with {match.group(1)} as torchvision's file "
            "name says: this is not torchvision's file; the reports name its hash",
            file=sys.stderr,
        )
    return model.eval(), Weights(source, sha256=digest)
