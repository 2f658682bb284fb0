"""The config files tensorflow_model_server reads, as text-format protos: models, batching, monitoring,
the platform config (`--platform_config_file`) and the session config (`--tensorflow_session_config_file`).

A file that does not parse, or that TF Serving would refuse, fails at start with the file,
the line and the field, so a typo never becomes a silently ignored setting.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import Message
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow_serving.config import model_server_config_pb2

from .cpu import bf16_refusal
from .protos import POOL, BatchingParameters, MonitoringConfig, PlatformConfigMap, SavedModelBundleSourceAdapterConfig

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigError(ValueError):
    """A config file or flag combination the server cannot start with; the message says where."""


def parse_text_proto(path: Path, message: Message, what: str) -> Message:
    """Parse `path` into `message`, naming file, line, column and field on any error."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        text_format.Parse(text, message, descriptor_pool=POOL)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{path}:{line}:{column}" if line else str(path)
        detail = str(exc).split(" : ", 1)[-1]
        raise ConfigError(f"{where}: invalid {what} ({message.DESCRIPTOR.full_name}): {detail}") from None
    return message


def _line_of(path: Path, needle: str) -> str:
    """`path:line` of the first line containing `needle`, for errors found after parsing."""
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if needle in line:
            return f"{path}:{number}"
    return str(path)


# ---------------------------------------------------------------------------- models.config


def load_model_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """Read and check a ModelServerConfig (`--model_config_file`)."""
    config = parse_text_proto(path, model_server_config_pb2.ModelServerConfig(), "model config file")
    check_model_config(config, str(path), lambda needle: _line_of(path, needle))
    return config


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config `--model_name` and `--model_base_path` stand for: one model, latest version."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    model.model_version_policy.latest.num_versions = 1
    return config


def check_model_config(config: model_server_config_pb2.ModelServerConfig, source: str, where=lambda _: "") -> None:
    """Refuse what TF Serving refuses: no models, custom configs, duplicate names, bad labels."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{source}: only model_config_list is supported (custom_model_config is a TF Serving plugin)")
    seen = set()
    for model in config.model_config_list.config:
        at = where(f'"{model.name}"') or source
        if not model.name:
            raise ConfigError(f"{source}: a model config has no name")
        if model.name in seen:
            raise ConfigError(f"{at}: model name '{model.name}' appears twice; names must be unique")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"{at}: model '{model.name}' has no base_path")
        if not model.model_platform:
            raise ConfigError(
                f"{at}: Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f'ModelServerConfig::model_platform, model name is {model.name}: add model_platform: "tensorflow"'
            )
        if model.model_platform != "tensorflow":
            raise ConfigError(
                f"{at}: model '{model.name}': model_platform '{model.model_platform}' is not served here; "
                "use 'tensorflow'"
            )
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(f"{at}: model '{model.name}': latest.num_versions must be positive")
        if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
            raise ConfigError(f"{at}: model '{model.name}': a specific version policy must list versions")
        for label, version in model.version_labels.items():
            if not label or not (label[0].isalpha() or label[0] == "_") or not label.replace("_", "").isalnum():
                raise ConfigError(f"{at}: model '{model.name}': version label '{label}' is not a valid label")
            if version <= 0:
                raise ConfigError(f"{at}: model '{model.name}': label '{label}' points to version {version}")
        if not model.model_platform:
            raise ConfigError(
                f"{at}: Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f'ModelServerConfig::model_platform, model name is {model.name}: add model_platform: "tensorflow"'
            )


# ---------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class Batching:
    """BatchingParameters with TF Serving's defaults applied and its rules checked."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0

    @property
    def execution_batch_size(self) -> int:
        """Largest batch run at once: max_execution_batch_size when splitting, else max_batch_size."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size


def batching_from_proto(params: Message, source: str, num_cores: int) -> Batching:
    """Apply TF Serving's defaults to a BatchingParameters message and check its rules."""

    def value(field: str, default):
        return getattr(params, field).value if params.HasField(field) else default

    batching = Batching(
        max_batch_size=value("max_batch_size", 1000),
        batch_timeout_micros=value("batch_timeout_micros", 0),
        max_enqueued_batches=value("max_enqueued_batches", 10),
        num_batch_threads=value("num_batch_threads", num_cores),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes),
        pad_variable_length_inputs=params.pad_variable_length_inputs,
        enable_large_batch_splitting=value("enable_large_batch_splitting", False),
        max_execution_batch_size=value("max_execution_batch_size", 0),
    )
    for field in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(batching, field) <= 0:
            raise ConfigError(f"{source}: {field} must be positive, not {getattr(batching, field)}")
    if batching.batch_timeout_micros < 0:
        raise ConfigError(f"{source}: batch_timeout_micros must not be negative")
    if (
        batching.enable_large_batch_splitting
        and params.HasField("max_execution_batch_size")
        and (batching.max_execution_batch_size <= 0)
    ):
        raise ConfigError(
            f"{source}: max_execution_batch_size must be positive, not {batching.max_execution_batch_size}"
        )
    if batching.enable_large_batch_splitting and batching.max_execution_batch_size > batching.max_batch_size:
        raise ConfigError(f"{source}: max_execution_batch_size must not exceed max_batch_size")
    sizes = batching.allowed_batch_sizes
    if sizes:
        if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] <= 0:
            raise ConfigError(f"{source}: allowed_batch_sizes must be positive and strictly increasing, got {sizes}")
        if sizes[-1] != batching.execution_batch_size:
            field = "max_execution_batch_size" if batching.execution_batch_size != batching.max_batch_size else ""
            raise ConfigError(
                f"{source}: the last entry of allowed_batch_sizes ({sizes[-1]}) must equal "
                f"{field or 'max_batch_size'} ({batching.execution_batch_size})"
            )
    return batching


def load_batching(path: Path | None, num_cores: int) -> Batching:
    """`--batching_parameters_file`, or TF Serving's defaults when batching is on without one."""
    if path is None:
        return batching_from_proto(BatchingParameters(), "default batching parameters", num_cores)
    params = parse_text_proto(path, BatchingParameters(), "batching parameters file")
    return batching_from_proto(params, str(path), num_cores)


# ---------------------------------------------------------------------------- monitoring


def load_monitoring(path: Path | None) -> str | None:
    """The Prometheus path a monitoring config enables, or None when metrics are off."""
    if path is None:
        return None
    config = parse_text_proto(path, MonitoringConfig(), "monitoring config file")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    metrics_path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not metrics_path.startswith("/"):
        raise ConfigError(f"{_line_of(path, 'path')}: prometheus_config.path must start with '/'")
    return metrics_path


# ---------------------------------------------------------------------------- platform and session config

ADAPTER_TYPE = "tensorflow.serving.SavedModelBundleSourceAdapterConfig"
# SessionBundleConfig fields whose effect this server does not have: refused rather than ignored.
UNSUPPORTED_BUNDLE_FIELDS = (
    "session_target",
    "session_run_load_threadpool_index",
    "experimental_fixed_input_tensors",
    "prefer_tflite_model",
    "enable_per_model_batching_params",
    "wrap_session_with_no_threading_params",
)


@dataclass(frozen=True)
class SessionSettings:
    """How every version's Session is made, as SessionBundleConfig says it (or the flags, without one)."""

    session_config: config_pb2.ConfigProto
    batching: Batching | None
    saved_model_tags: tuple[str, ...]
    enable_model_warmup: bool
    warmup_iterations: int

    @property
    def bf16(self) -> bool:
        return uses_bf16(self.session_config)


def uses_bf16(config: config_pb2.ConfigProto) -> bool:
    """The ConfigProto turns on oneDNN's bf16 auto mixed precision."""
    rewrite = config.graph_options.rewrite_options
    return rewrite.auto_mixed_precision_onednn_bfloat16 == rewriter_config_pb2.RewriterConfig.ON


def apply_mixed_precision(config: config_pb2.ConfigProto, mode: str, where: str) -> None:
    """TF Serving's `mixed_precision` ("bfloat16" or empty) as the rewrite option it stands for."""
    if mode == "bfloat16":
        rewrite = config.graph_options.rewrite_options
        rewrite.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    elif mode:
        raise ConfigError(f"{where}: mixed_precision '{mode}' is not supported; the valid option is \"bfloat16\"")


def check_bf16(settings: SessionSettings, where: str) -> None:
    """Refuse a bf16 session config on a CPU that does not compute bf16 natively."""
    if settings.bf16:
        refusal = bf16_refusal()
        if refusal:
            raise ConfigError(f"{where} asks for bf16 (auto_mixed_precision_onednn_bfloat16): {refusal}")


def load_session_config(path: Path) -> config_pb2.ConfigProto:
    """A tensorflow.ConfigProto text file (`--tensorflow_session_config_file`)."""
    return parse_text_proto(path, config_pb2.ConfigProto(), "session config file")


def load_platform_config(path: Path, num_cores: int) -> SessionSettings:
    """Read a PlatformConfigMap (`--platform_config_file`) as TF Serving does for the tensorflow platform.

    As in TF Serving, the file then decides batching (its batching_parameters; --enable_batching
    is ignored), the session's ConfigProto (the thread flags are ignored), the tags and warmup.
    """
    config = parse_text_proto(path, PlatformConfigMap(), "platform config file")
    platforms = dict(config.platform_configs)
    if "tensorflow" not in platforms:
        raise ConfigError(f'{path}: no platform_configs entry with key "tensorflow", the platform served here')
    others = sorted(set(platforms) - {"tensorflow"})
    if others:
        raise ConfigError(f"{_line_of(path, others[0])}: platform '{others[0]}' is not served here; only tensorflow")
    adapter = platforms["tensorflow"].source_adapter_config
    if adapter.type_url.rsplit("/", 1)[-1] != ADAPTER_TYPE:
        raise ConfigError(
            f"{_line_of(path, 'source_adapter_config')}: source_adapter_config holds "
            f"'{adapter.type_url or 'nothing'}'; the tensorflow platform takes [type.googleapis.com/{ADAPTER_TYPE}]"
        )
    unpacked = SavedModelBundleSourceAdapterConfig()
    adapter.Unpack(unpacked)
    bundle = unpacked.legacy_config
    for field in UNSUPPORTED_BUNDLE_FIELDS:
        value = getattr(bundle, field)
        is_set = bundle.HasField(field) if field == "session_run_load_threadpool_index" else bool(value)
        if is_set:
            raise ConfigError(f"{_line_of(path, field)}: SessionBundleConfig.{field} is not supported by pt2tf-serve")
    session = config_pb2.ConfigProto.FromString(bundle.session_config.SerializeToString())
    apply_mixed_precision(session, bundle.mixed_precision, _line_of(path, "mixed_precision"))
    batching = None
    if bundle.HasField("batching_parameters"):
        batching = batching_from_proto(bundle.batching_parameters, str(path), num_cores)
    iterations = bundle.model_warmup_options.num_request_iterations
    settings = SessionSettings(
        session_config=session,
        batching=batching,
        saved_model_tags=tuple(bundle.saved_model_tags) or ("serve",),
        enable_model_warmup=bundle.enable_model_warmup,
        warmup_iterations=iterations.value if bundle.model_warmup_options.HasField("num_request_iterations") else 1,
    )
    check_bf16(settings, str(path))
    return settings
