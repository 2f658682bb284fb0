"""The PyTorch model: a torchvision ImageNet classifier (ResNet18 by default) in eval mode, with seeded, user or
torchvision weights, and the preprocessing its torchvision weights specify."""

from __future__ import annotations

import difflib
import os
import re
import socket
import sys
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from .artifacts import sha256
from .metrics import MIN_DISTINCT_TOP1
from .preprocessing import DEFAULT_MODEL, GREY_LEVEL_SHARE, IMAGENET_STD, INPUT_SIZE, NUM_CLASSES, Preprocessing

SEEDED = "seeded"
SEEDED_NOTE = "seeded weights: labels are not ImageNet predictions"
# Standard deviation of the calibrated seeded classifier's logits on the calibration inputs:
# about what ImageNet-trained ResNet18 gives on natural photos.
CALIBRATED_LOGIT_STD = 1.0
# The most a whitening direction is amplified relative to the strongest, tried in turn until the seeded answers vary
# enough (see calibrate_classifier); None: plain whitening.
WHITENING_GAINS = (20.0, 40.0, 80.0, None)
# How much each input's own class is raised above what the seeded weights give it, in units of their logits' standard
# deviation, tried in turn until every margin outlasts GREY_LEVEL_MARGIN_FACTOR times what a grey level moves it.
MARGIN_BOOSTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
GREY_LEVEL_MARGIN_FACTOR = 4.0
GREY_LEVEL_DRAWS = 2  # perturbed copies of each calibration input
_FEATURE_BATCH = 16
DOWNLOAD_TIMEOUT_S = 30
# torchvision's file names end in the first hex digits of the file's sha256: resnet18-f37072fd.pth
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


class WeightsError(ValueError):
    """The weights asked for cannot be loaded; the message says what to do."""


class ModelError(ValueError):
    """The model asked for is not one the project can build; the message says what to do."""


def classifier_names() -> list[str]:
    """torchvision's ImageNet classifiers (its `torchvision.models` namespace, not detection or video)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_model_name(name: str) -> str:
    """`name` if torchvision builds it as an ImageNet classifier; else an error naming close matches."""
    known = classifier_names()
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelError(
        f"--model {name}: not a torchvision ImageNet classifier. {hint}"
        f"Pass one of torchvision.models.list_models(module=torchvision.models): {', '.join(known)}"
    )


def default_weights(model: str) -> WeightsEnum:
    """torchvision's recommended weights for `model`, whose transforms and labels the project follows."""
    return get_model_weights(check_model_name(model)).DEFAULT


def preprocessing_for(model: str, weights: WeightsEnum | None = None) -> Preprocessing:
    """The inference transform `weights` (default: the model's DEFAULT weights) specify, read from torchvision."""
    weights = weights or default_weights(model)
    transform = weights.transforms()
    source = f"{type(weights).__name__}.{weights.name}"
    resize, crop = transform.resize_size, transform.crop_size
    if len(resize) != 1 or len(crop) != 1:
        raise ModelError(f"--model {model}: {source} resizes to {resize} and crops to {crop}; one size each expected")
    if crop[0] != INPUT_SIZE:
        raise ModelError(
            f"--model {model}: {source} crops to {crop[0]}×{crop[0]}, and the serving contract's input is "
            f"[batch, 3, {INPUT_SIZE}, {INPUT_SIZE}]; pick a classifier whose weights crop to {INPUT_SIZE} "
            "(e.g. resnet50, mobilenet_v3_large, efficientnet_b0, convnext_tiny, vit_b_16, swin_t)"
        )
    interpolation = transform.interpolation.value
    try:
        return Preprocessing(
            source, resize[0], crop[0], interpolation, bool(transform.antialias), tuple(transform.mean),
            tuple(transform.std),
        )  # fmt: skip
    except ValueError as exc:
        raise ModelError(f"--model {model}: {exc}; the in-graph preprocessing does only those") from None


def labels_for(model: str, weights: WeightsEnum | None = None) -> list[str]:
    """The class names the weights' metadata lists (ImageNet's 1000 for every torchvision classifier)."""
    categories = list((weights or default_weights(model)).meta["categories"])
    if len(categories) != NUM_CLASSES:
        raise ModelError(f"--model {model}: its weights list {len(categories)} classes; the contract has {NUM_CLASSES}")
    return categories


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


def classifier_layer(model: nn.Module, num_classes: int = NUM_CLASSES) -> nn.Linear:
    """The model's last `Linear` with `num_classes` outputs: the classifier whose input the calibration whitens."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        raise ModelError(
            f"{type(model).__name__} has no Linear layer with {num_classes} outputs, so its seeded classifier "
            "cannot be calibrated; export it with --weights (torchvision's name or a state_dict file)"
        )
    return found[-1]


def _penultimate(model: nn.Module, inputs: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, nn.Linear]:
    """The classifier layer's input features for `inputs` in float64, and the layer.

    Checked to be the model's last step: its output must be the model's output, or whitening
    its input would not set the logits.
    """
    layer = classifier_layer(model, num_classes)
    seen: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda _m, args, out: seen.update(features=args[0], logits=out))
    try:
        with torch.no_grad():
            logits = model(inputs)
    finally:
        hook.remove()
    if not torch.equal(seen["logits"], logits):
        raise ModelError(
            f"{type(model).__name__}'s last {num_classes}-output Linear is not its final step (something follows "
            "it), so its seeded classifier cannot be calibrated; export it with --weights"
        )
    return torch.flatten(seen["features"], 1).double(), layer


def grey_level_perturbed(
    inputs: torch.Tensor,
    std: tuple[float, ...],
    draws: int = GREY_LEVEL_DRAWS,
    share: float = GREY_LEVEL_SHARE,
    seed: int = 0,
) -> torch.Tensor:
    """`draws` copies of each normalized input with `share` of its colour values one grey level (1/255/std) up or
    down at random: as large a difference as verify's preprocessing check admits on average. Seeded, so the
    calibration is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    grey = 1 / 255 / torch.tensor(std, dtype=inputs.dtype).view(1, -1, 1, 1)
    copies = inputs.repeat(draws, 1, 1, 1)
    moved = torch.rand(copies.shape, generator=generator) < share
    sign = torch.randint(0, 2, copies.shape, generator=generator) * 2 - 1
    return copies + moved * sign * grey


def _features(model: nn.Module, inputs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`_penultimate`'s features for many inputs, a batch at a time."""
    return torch.cat([_penultimate(model, b, num_classes)[0] for b in inputs.split(_FEATURE_BATCH)])


def _margin_boost(whitened: torch.Tensor, top1: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Classifier rows [num_classes, rank] on the whitened features that add 1 to input i's class on input i and
    −1/n on every other input: only the inputs' own classes move, up on their own input, so each keeps its answer."""
    n = len(whitened)
    # u_i · z_j = δ_ij − 1/n: the centred features span n − 1 directions, so this is exact.
    duals = (torch.linalg.pinv(whitened) @ (torch.eye(n, dtype=whitened.dtype) - 1 / n)).T
    boost = torch.zeros(num_classes, whitened.shape[1], dtype=whitened.dtype)
    boost.index_add_(0, top1, duals)
    return boost


def _grey_level_ratio(logits: torch.Tensor, moved: torch.Tensor) -> float:
    """The smallest, over inputs, of an input's top-1 margin over how much its grey-level copies (`moved`: [draws,
    inputs, classes]) lose of it; inf when no copy loses any."""
    rows = torch.arange(len(logits))
    top1 = logits.argmax(dim=1)
    margins = logits[rows, top1] - logits.scatter(1, top1[:, None], -torch.inf).max(dim=1).values
    kept = moved[:, rows, top1] - moved.scatter(2, top1[None, :, None].expand(len(moved), -1, 1), -torch.inf).amax(2)
    loss = (margins - kept).amax(dim=0).clamp(min=0)
    return float((margins / loss).min())


def calibrate_classifier(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    logit_std: float = CALIBRATED_LOGIT_STD,
    num_classes: int = NUM_CLASSES,
    distinct: int = MIN_DISTINCT_TOP1,
    std: tuple[float, ...] = IMAGENET_STD,
) -> dict:
    """Fold a whitening of the penultimate features, measured on `inputs`, into the classifier layer, and widen
    each input's top-1 margin until a grey level cannot move its answer.

    A randomly initialised classifier network gives every input nearly the same answer: in
    ResNet18 the pooled features are ReLU outputs whose common mean is ~8× larger than what
    varies between inputs, so the random `fc` layer's answer is decided by that mean. Here the features'
    mean is removed and the directions in which the calibration inputs differ are scaled to
    unit variance (PCA whitening, restricted to the subspace the inputs span), then the
    seeded classifier weights are applied and scaled so the logits have standard deviation
    `logit_std`. The result is still one `Linear` layer: fc(x) = W'x + b' with
    W' = α·(W·V + β·B)·diag(1/σ)·Vᵀ and b' = −W'μ. Which class each input gets is still decided by
    the seeded weights; only the features it reads are standardised.

    Float32 rounding puts ~1e-7 of the features' magnitude into every direction, and whitening
    a direction in which the inputs barely differ amplifies it into the logits: MobileNetV3-Small's
    weakest direction is 250× weaker than its strongest, which made ONNX Runtime and PyTorch
    differ by 7e-5. So no direction is scaled up by more than 20 times the strongest direction's
    gain (ResNet18's ratio is 13: its calibration is plain whitening), or 40, 80, unbounded when the
    answers would otherwise vary too little (MobileNetV3-Large: 11 distinct classes at 20, 13 at 40): fewer than
    `distinct` top-1 classes among the inputs.

    Among 1000 seeded logits the top two are often close: MobileNetV3-Large's smallest margin was 4e-4 logit
    standard deviations, while 29% of a photo's colour values one grey level off (`grey_level_perturbed`, what
    verify's preprocessing bound admits on average) moved its logits by up to 0.1, so `predict_images`' rounding
    changed an answer. So B raises each input's own class (`_margin_boost`), by β = 0, 0.25, 0.5, ... logit
    standard deviations, the first at which every input's margin is GREY_LEVEL_MARGIN_FACTOR times what its
    grey-level copies lose of it. The classes stay the seeded weights' choice.
    """
    features, layer = _penultimate(model, inputs, num_classes)
    moved = _features(model, grey_level_perturbed(inputs, std), num_classes).view(-1, *features.shape)
    mean = features.mean(dim=0)
    _, singular, right = torch.linalg.svd(features - mean, full_matrices=False)
    rank = int((singular > singular[0] * 1e-6).sum())
    basis = right[:rank].T  # [features, rank]
    sigma = singular[:rank] / (len(features) - 1) ** 0.5  # per-direction standard deviation
    seeded = layer.weight.detach().double() @ basis  # the seeded classifier on the un-scaled directions
    for gain in WHITENING_GAINS:
        scale = sigma if gain is None else torch.maximum(sigma, sigma[0] / gain)
        whitened = (features - mean) @ (basis / scale)
        logits = whitened @ seeded.T
        if len(set(logits.argmax(dim=1).tolist())) >= distinct:
            break
    rows = seeded / logits.std()
    boost = _margin_boost(whitened, logits.argmax(dim=1), num_classes)
    moved_whitened = (moved - mean) @ (basis / scale)
    for beta in MARGIN_BOOSTS:
        candidate = rows + beta * boost
        ratio = _grey_level_ratio(whitened @ candidate.T, moved_whitened @ candidate.T)
        if ratio >= GREY_LEVEL_MARGIN_FACTOR:
            break
    else:
        print(
            f"warning: the seeded classifier's smallest top-1 margin is only {ratio:.1f}× what a grey level moves it "
            f"(wanted {GREY_LEVEL_MARGIN_FACTOR:g}×): predict_images' rounding may change an answer; export with "
            "--weights to use real weights",
            file=sys.stderr,
        )
    weight = candidate @ (basis / scale).T
    spread = ((features - mean) @ weight.T).std()
    weight = weight * (logit_std / spread)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(num_classes))
        layer.bias.copy_((-(weight @ mean)).float())
    return {
        "method": "penultimate-feature PCA whitening folded into the classifier layer, own classes raised",
        "inputs": len(features),
        "rank": rank,
        "feature_mean_norm": round(float(mean.norm()), 4),
        "feature_spread": [round(float(s), 4) for s in sigma],
        "max_whitening_gain": gain,
        "margin_boost": beta,
        "grey_level_share": round(GREY_LEVEL_SHARE, 4),
        # Every input's top-1 margin over what its grey-level copies lose of it, at the least (≥ the factor
        # unless the largest boost fell short).
        "grey_level_margin_ratio": round(ratio, 2),
        "logit_std": logit_std,
    }


# Normalization layers whose scale and shift are seeded; BatchNorm's running statistics are also measured.
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def seeded_model(model: str = DEFAULT_MODEL, seed: int = 0) -> nn.Module:
    """torchvision's `model` with seeded weights and normalization layers that are far from identity.

    Freshly built BatchNorm layers have mean 0, variance 1, scale 1 and shift 0, and fresh
    LayerNorm/GroupNorm layers scale 1 and shift 0, so a conversion that drops or mis-folds
    them would still match. Here every scale and shift is random, and BatchNorm's running
    statistics are measured on seeded data flowing through those layers, then shifted and
    rescaled at random, so every normalization layer changes its input and a bug in one shows
    up as a parity failure.

    Its classifier is still the random one, which gives nearly every input the same answer;
    `build_model` calibrates it (`calibrate_classifier`) on the reference inputs.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = get_model(check_model_name(model), weights=None)
    seed_normalization(network, generator)
    with torch.no_grad():
        classifier = classifier_layer(network)
        if not classifier.weight.any():
            # ViT initialises its head to zeros: every logit would be 0 whatever the features.
            classifier.weight.normal_(0.0, 0.01, generator=generator)
    return network.eval()


def seed_normalization(network: nn.Module, generator: torch.Generator) -> None:
    """Every normalization layer's scale and shift at random, BatchNorm's statistics measured then moved (see
    `seeded_model`); the network is left in eval mode."""
    norms = [m for m in network.modules() if isinstance(m, _NORMS) and getattr(m, "weight", None) is not None]
    batchnorms = [m for m in norms if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.empty_like(norm.weight).uniform_(0.5, 1.5, generator=generator))
            norm.bias.copy_(torch.empty_like(norm.bias).normal_(0.0, 0.2, generator=generator))
            if norm in batchnorms:
                norm.reset_running_stats()
                norm.momentum = None  # cumulative average over the calibration batches
        if batchnorms:
            network.train()
            for _ in range(4):
                network(torch.randn(8, 3, INPUT_SIZE, INPUT_SIZE, generator=generator))
        for bn in batchnorms:
            bn.momentum = 0.1
            # Zero-mean noise through zero-mean convolutions leaves running means near 0:
            # shift and rescale the measured statistics so none is close to the identity.
            std = bn.running_var.sqrt()
            bn.running_mean.add_(torch.empty_like(std).normal_(0.0, 0.3, generator=generator) * std)
            bn.running_var.mul_(torch.empty_like(std).uniform_(0.5, 2.0, generator=generator))
    network.eval()


def torchvision_weights(name: str, model: str = DEFAULT_MODEL) -> WeightsEnum:
    """The member `name` of `model`'s torchvision weights enum (IMAGENET1K_V1, DEFAULT, ...)."""
    enum = get_model_weights(check_model_name(model))
    try:
        return enum[name]
    except KeyError:
        known = ", ".join(w.name for w in enum)
        raise WeightsError(
            f"--weights {name}: not a file, and not a torchvision {model} weights name ({known}); "
            "pass a path to a state_dict file, one of those names, or 'seeded'"
        ) from None


def hub_checkpoint(url: str) -> Path:
    """Where torchvision keeps the file of `url`: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def fetch_torchvision_file(name: str, url: str | None = None, model: str = DEFAULT_MODEL) -> Path:
    """The torch hub cache's copy of torchvision's weights file `name`, downloaded if absent.

    The download is torchvision's own (torch.hub.download_url_to_file), which checks the
    file's sha256 against the prefix in its name and keeps nothing on a mismatch. `url`
    replaces torchvision's address (tests serve a file on loopback; never the network).
    """
    url = url or torchvision_weights(name, model).url
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


def is_torchvision_name(weights: str) -> bool:
    """A --weights value that names torchvision weights rather than a file."""
    return not Path(weights).exists() and os.sep not in weights and not weights.endswith((".pt", ".pth"))


def build_model(
    weights: str = SEEDED, seed: int = 0, calibration_inputs: torch.Tensor | None = None, model: str = DEFAULT_MODEL
) -> tuple[nn.Module, Weights]:
    """torchvision's `model` in eval mode from `weights`: 'seeded', a state_dict path, or a torchvision name.

    Seeded weights get their classifier calibrated on `calibration_inputs` when given;
    a user's or torchvision's weights are used exactly as they are.
    """
    if weights == SEEDED:
        network = seeded_model(model, seed)
        calibration = {}
        if calibration_inputs is not None:
            calibration = calibrate_classifier(network, calibration_inputs, std=preprocessing_for(model).std)
        return network, Weights(SEEDED, seed, calibration=calibration)
    path = Path(weights)
    source = str(path)
    if is_torchvision_name(weights):
        path = fetch_torchvision_file(weights, model=model)
        source = f"torchvision:{weights}"
    state = load_state_dict(path)
    network = get_model(check_model_name(model), weights=None)
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"--weights {path}: not a torchvision {model} state_dict "
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
    return network.eval(), Weights(source, sha256=digest)
