"""tensorflow_model_server's command line: the same flag names, defaults and `--flag=value` syntax.

Two flags are the embedded server's own:
- `--bind_address` (default 127.0.0.1, loopback only; `--bind_address=0.0.0.0` serves every
  interface, as tensorflow_model_server always does);
- `--volume=HOST_DIR:/container/dir` (repeatable), which maps every path the server reads —
  config file flags and model base paths — as `docker run -v` maps a mount, so the flags and
  config files written for the container serve unchanged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

# name → (type, default, help); the help texts are TF Serving's, shortened.
FLAGS: dict[str, tuple[type, object, str]] = {
    "port": (int, 8500, "Port to listen on for gRPC API"),
    "rest_api_port": (int, 0, "Port to listen on for HTTP/REST API. 0 disables the REST API."),
    "rest_api_num_threads": (int, 0, "Number of threads for HTTP/REST API processing. 0: 4 × the number of cores."),
    "rest_api_timeout_in_ms": (int, 30000, "Timeout for HTTP/REST API calls."),
    "model_name": (str, "default", "name of model (ignored if --model_config_file flag is set)"),
    "model_base_path": (str, "", "path to export (ignored if --model_config_file flag is set, otherwise required)"),
    "model_config_file": (
        str,
        "",
        "a ModelServerConfig text proto; if set, --model_name and --model_base_path are ignored",
    ),
    "model_config_file_poll_wait_seconds": (int, 0, "seconds between reads of --model_config_file; 0 reads it once"),
    "file_system_poll_wait_seconds": (int, 1, "seconds between polls of the file system for new model versions"),
    "enable_batching": (bool, False, "enable batching"),
    "batching_parameters_file": (str, "", "a BatchingParameters text proto; default parameters if unset"),
    "monitoring_config_file": (str, "", "a MonitoringConfig text proto"),
    "platform_config_file": (
        str,
        "",
        "a PlatformConfigMap text proto; if set, it decides batching, session config, tags and warmup "
        "(--enable_batching, the thread flags and --tensorflow_session_config_file are ignored)",
    ),
    "tensorflow_session_config_file": (str, "", "a tensorflow.ConfigProto text proto for every Session"),
    "mixed_precision": (str, "", "auto mixed precision: bfloat16 (needs avx512_bf16 or amx_bf16), or empty"),
    "enable_model_warmup": (bool, True, "replay assets.extra/tf_serving_warmup_requests before serving a version"),
    "num_request_iterations_for_warmup": (int, 1, "times each warmup request is replayed"),
    "tensorflow_intra_op_parallelism": (int, 0, "intra-op thread pool size; 0 lets TensorFlow choose"),
    "tensorflow_inter_op_parallelism": (int, 0, "inter-op thread pool size; 0 lets TensorFlow choose"),
    "grpc_max_threads": (
        int,
        0,
        "threads that run Sessions when batching is off (a waiting gRPC call holds none); 0: 4 × the cores",
    ),
    "allow_version_labels_for_unavailable_models": (bool, False, "allow labels to point to versions not yet loaded"),
    "saved_model_tags": (str, "serve", "comma-separated MetaGraphDef tags to load"),
    "max_num_load_retries": (int, 5, "times a failed version load is retried"),
    "load_retry_interval_micros": (int, 60_000_000, "microseconds between load retries"),
    "enable_serialization_as_tensor_content": (bool, False, "gRPC outputs as packed tensor_content, not typed fields"),
    "enable_grpc_healthcheck_service": (bool, False, "Enable the standard gRPC healthcheck service."),
    "bind_address": (str, "127.0.0.1", "(embedded server only) address both ports bind; 0.0.0.0 for every interface"),
    "volume": (tuple, (), "(embedded server only, repeatable) HOST_DIR:/container/dir maps paths as `docker run -v`"),
}

USAGE = "usage: pt2tf-serve --model_base_path=PATH [--model_name=NAME] | --model_config_file=FILE  [--flag=value ...]"


class FlagError(ValueError):
    """A command line tensorflow_model_server would refuse; the message names the argument."""


@dataclass(frozen=True)
class Options:
    port: int
    rest_api_port: int
    rest_api_num_threads: int
    rest_api_timeout_in_ms: int
    model_name: str
    model_base_path: str
    model_config_file: str
    model_config_file_poll_wait_seconds: int
    file_system_poll_wait_seconds: int
    enable_batching: bool
    batching_parameters_file: str
    monitoring_config_file: str
    platform_config_file: str
    tensorflow_session_config_file: str
    mixed_precision: str
    enable_model_warmup: bool
    num_request_iterations_for_warmup: int
    tensorflow_intra_op_parallelism: int
    tensorflow_inter_op_parallelism: int
    grpc_max_threads: int
    allow_version_labels_for_unavailable_models: bool
    saved_model_tags: str
    max_num_load_retries: int
    load_retry_interval_micros: int
    enable_serialization_as_tensor_content: bool
    enable_grpc_healthcheck_service: bool
    bind_address: str
    volume: tuple[str, ...]

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    def host_path(self, path: str) -> Path:
        """Where a container path is on this machine, through the --volume mounts (longest mount first)."""
        mounts = sorted((v.rsplit(":", 1) for v in self.volume), key=lambda m: len(m[1]), reverse=True)
        for host, mount in mounts:
            mount = mount.rstrip("/") or "/"
            if path == mount or path.startswith(mount + "/"):
                return Path(host).resolve() / path[len(mount) :].lstrip("/")
        return Path(path)


assert {f.name for f in fields(Options)} == set(FLAGS), "Options and FLAGS must list the same flags"


def _convert(name: str, kind: type, raw: str | None):
    if kind is bool:  # TF Serving's parser takes exactly these
        if raw is None or raw == "true":
            return True
        if raw == "false":
            return False
        raise FlagError(f"flag --{name}: '{raw}' is not a boolean (use --{name}=true or --{name}=false)")
    if raw is None:
        raise FlagError(f"flag --{name} needs a value: --{name}=VALUE")
    if kind is tuple:
        return (raw,)
    if kind is int:
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise FlagError(f"flag --{name}: '{raw}' is not an integer")
        return int(raw)
    return raw


def parse_flags(argv: list[str]) -> Options:
    """Parse TF Serving's flags; an unknown flag or a stray argument is an error naming it."""
    values = {name: default for name, (_, default, _) in FLAGS.items()}
    for arg in argv:
        if not arg.startswith("--"):
            raise FlagError(f"unknown argument: {arg} (flags are written --name=value)")
        name, eq, raw = arg[2:].partition("=")
        if name not in FLAGS:
            raise FlagError(f"unknown argument: {arg} (`pt2tf-serve --help` lists the flags)")
        value = _convert(name, FLAGS[name][0], raw if eq else None)
        values[name] = values[name] + value if FLAGS[name][0] is tuple else value
    options = Options(**values)
    if not options.model_config_file and not options.model_base_path:
        raise FlagError("give --model_base_path=PATH (with --model_name=NAME) or --model_config_file=FILE")
    if options.batching_parameters_file and not options.enable_batching and not options.platform_config_file:
        raise FlagError(
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    for volume in options.volume:
        if ":" not in volume or not volume.rsplit(":", 1)[1].startswith("/"):
            raise FlagError(f"flag --volume={volume}: write it as HOST_DIR:/container/dir, like docker's -v")
    for name in ("port", "rest_api_port"):
        if not 0 <= getattr(options, name) <= 65535:
            raise FlagError(f"flag --{name}={getattr(options, name)} is not a port number")
    if options.port == 0:
        raise FlagError("flag --port must be a port number for the gRPC API (TF Serving always serves gRPC)")
    if options.rest_api_port and options.rest_api_port == options.port:
        raise FlagError(f"--port and --rest_api_port are both {options.port}; give them different ports")
    return options


def help_text() -> str:
    """The flag list, as `--help` prints it."""
    lines = [USAGE, "", "Flags:"]
    for name, (kind, default, text) in FLAGS.items():
        lines.append(f"  --{name}={default!s:<10} {kind.__name__:5} {text}")
    return "\n".join(lines)
