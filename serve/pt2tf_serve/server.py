"""pt2tf-serve: the embedded stand-in for tensorflow_model_server (TF Serving's server.cc).

    pt2tf-serve --port=8500 --rest_api_port=8501 --model_name=resnet18 \\
        --model_base_path=$PWD/models/onnx2tf/resnet18 --enable_batching \\
        --batching_parameters_file=docker/config/batching.config \\
        --monitoring_config_file=docker/config/monitoring.config

It owns the ports and flags: it loads the models (blocking until they are AVAILABLE, as TF
Serving does), starts the gRPC and REST doors, polls the file system and the config file, and on
SIGTERM or Ctrl-C stops accepting, finishes the requests in flight and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .config import (
    ConfigError,
    SessionSettings,
    apply_mixed_precision,
    check_bf16,
    load_batching,
    load_model_config,
    load_monitoring,
    load_platform_config,
    load_session_config,
    single_model_config,
)
from .core import ServerCore
from .core import log as _log
from .cpu import cpu_info, onednn_report
from .flags import FlagError, Options, help_text, parse_flags
from .grpc_services import start_grpc
from .metrics import Metrics
from .predict import Predictor, find_signature
from .protocol import from_tensor_proto
from .rest import RestApi
from .servable import Servable
from .status import ServingError

SHUTDOWN_GRACE_SECONDS = 30
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


def session_settings(options: Options) -> SessionSettings:
    """How every version's Session is made: from --platform_config_file when given, else from the flags.

    As TF Serving's server.cc: without a platform config, --tensorflow_session_config_file is the base,
    the thread flags override its pools when set, and --mixed_precision=bfloat16 turns on oneDNN's
    bf16 auto mixed precision.
    """
    path = options.host_path
    if options.platform_config_file:
        return load_platform_config(path(options.platform_config_file), options.cores)
    config = tf.compat.v1.ConfigProto()
    if options.tensorflow_session_config_file:
        config = load_session_config(path(options.tensorflow_session_config_file))
    if options.tensorflow_intra_op_parallelism > 0 or options.tensorflow_inter_op_parallelism > 0:
        config.intra_op_parallelism_threads = options.tensorflow_intra_op_parallelism
        config.inter_op_parallelism_threads = options.tensorflow_inter_op_parallelism
    apply_mixed_precision(config, options.mixed_precision, "--mixed_precision")
    batching_file = path(options.batching_parameters_file) if options.batching_parameters_file else None
    settings = SessionSettings(
        session_config=config,
        batching=load_batching(batching_file, options.cores) if options.enable_batching else None,
        saved_model_tags=tuple(t for t in options.saved_model_tags.split(",") if t),
        enable_model_warmup=options.enable_model_warmup,
        warmup_iterations=max(options.num_request_iterations_for_warmup, 1),
    )
    check_bf16(settings, "--mixed_precision" if options.mixed_precision else "--tensorflow_session_config_file")
    return settings


def warmup_runner(iterations: int, metrics: Metrics):
    """Replays a version's warmup records before it becomes AVAILABLE (TF Serving's saved_model_warmup)."""

    def run(servable: Servable) -> None:
        started = time.monotonic()
        logs = servable.warmup_requests()
        status = "OK"
        try:
            for log in logs:
                kind = log.WhichOneof("log_type")
                if kind != "predict_log":
                    raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind}")
                request = log.predict_log.request
                signature = find_signature(servable, request.model_spec.signature_name, rest=False)
                inputs = {alias: from_tensor_proto(proto, alias) for alias, proto in request.inputs.items()}
                outputs = tuple(request.output_filter) or tuple(signature.outputs)
                for _ in range(iterations):
                    servable.run(signature, {k: np.asarray(v) for k, v in inputs.items()}, outputs)
        except ServingError as error:
            status = f"{error.code}: {error.message}"
            raise
        finally:
            metrics.warmup(str(servable.path), status, time.monotonic() - started, len(logs))
        if logs:
            _log(
                f"Finished reading warmup data for model at {servable.path}. Number of warmup records read: "
                f"{len(logs)}. Elapsed time (microseconds): {(time.monotonic() - started) * 1e6:.0f}."
            )

    return run


class ModelServer:
    """Everything one `pt2tf-serve` process runs."""

    def __init__(self, options: Options):
        self.options = options
        self.metrics = Metrics()
        path = options.host_path
        self.settings = session_settings(options)
        self.batching = self.settings.batching
        monitoring = path(options.monitoring_config_file) if options.monitoring_config_file else None
        self.metrics_path = load_monitoring(monitoring)
        if options.model_config_file:
            self.config_source = options.model_config_file
            self.config = load_model_config(path(options.model_config_file))
        else:
            self.config_source = "--model_base_path"
            self.config = single_model_config(options.model_name, options.model_base_path)
        for volume in options.volume:
            host = Path(volume.rsplit(":", 1)[0])
            if not host.is_dir():
                raise ConfigError(f"--volume={volume}: {host.resolve()} is not a directory")

        def on_batch(_queue, stats):
            self.metrics.batch(stats.input_size, stats.padded_size, stats.queuing_seconds)

        settings = self.settings
        self.core = ServerCore(
            settings.session_config,
            list(settings.saved_model_tags),
            self.batching,
            options.allow_version_labels_for_unavailable_models,
            options.max_num_load_retries,
            options.load_retry_interval_micros / 1e6,
            warmup_runner(settings.warmup_iterations, self.metrics) if settings.enable_model_warmup else None,
            on_batch=on_batch,
            host_path=options.host_path,
        )
        # Without batching each request runs its own Session.run, as on TF Serving's request threads.
        self.predictor = Predictor(self.core, self.metrics, options.grpc_max_threads or 4 * options.cores)
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()
        self.grpc_server = None
        self.grpc_port = 0
        self.rest_port = 0

    def reload(self, config) -> None:
        """Serve a new ModelServerConfig (gRPC HandleReloadConfigRequest, or the polled config file)."""
        with self._reload_lock:
            self.core.set_config(config, "HandleReloadConfigRequest", self.options.file_system_poll_wait_seconds)
            self.config = config

    def _poll_file_system(self) -> None:
        wait = self.options.file_system_poll_wait_seconds
        while not self._stop.wait(wait):
            try:
                self.core.poll()
            except Exception as exc:  # a poll that fails must not end polling
                _log(f"file system poll failed: {exc}")

    def _poll_config_file(self) -> None:
        wait = self.options.model_config_file_poll_wait_seconds
        path = self.options.host_path(self.options.model_config_file)
        while not self._stop.wait(wait):
            try:
                config = load_model_config(path)
                if config != self.config:
                    _log(f"{path} changed: reloading the served models")
                    self.reload(config)
            except (ConfigError, ServingError) as exc:
                _log(f"PollFilesystemAndReloadConfig failed to ReloadConfig: {exc}")

    def start_models(self) -> None:
        """Load the initial models; returns once each has an AVAILABLE version (or raises)."""
        self.core.set_config(self.config, self.config_source, self.options.file_system_poll_wait_seconds)
        if self.options.file_system_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_file_system, name="fs-poll", daemon=True).start()
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_config_file, name="config-poll", daemon=True).start()

    async def start_grpc(self) -> None:
        options = self.options
        address = f"{options.bind_address}:{options.port}"
        self.grpc_server, self.grpc_port = await start_grpc(
            self.core, self.predictor, self.metrics, self.reload, address,
            options.enable_serialization_as_tensor_content, options.enable_grpc_healthcheck_service,
        )  # fmt: skip
        _log(f"Running gRPC ModelServer at {options.bind_address}:{self.grpc_port} ...")

    async def serve(self, stopping: asyncio.Event) -> None:
        """Serve gRPC and REST (if enabled) on this event loop until `stopping` is set, then stop both gracefully."""
        options = self.options
        await self.start_grpc()
        rest = None
        runner = None
        if options.rest_api_port:
            rest = RestApi(
                self.core,
                self.predictor,
                self.metrics,
                options.rest_api_num_threads or 4 * options.cores,
                options.rest_api_timeout_in_ms,
                self.metrics_path,
            )
            # handler_cancellation: a client that disconnects cancels its handler, so its queued request leaves.
            runner = web.AppRunner(
                rest.app(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, handler_cancellation=True
            )
            await runner.setup()
            # aiohttp's default backlog of 128 drops the SYNs of a larger burst of new connections, and
            # their clients retry a second later: a flood would be refused after 1 s instead of at once.
            site = web.TCPSite(
                runner, options.bind_address, options.rest_api_port, reuse_address=True, backlog=LISTEN_BACKLOG
            )
            await site.start()
            self.rest_port = options.rest_api_port
            _log(f"Exporting HTTP/REST API at:{options.bind_address}:{options.rest_api_port} ...")
            if self.metrics_path:
                _log(f"Prometheus metrics at http://{options.bind_address}:{options.rest_api_port}{self.metrics_path}")
        _log("ready")
        await stopping.wait()
        _log("stopping: no new requests; finishing those in flight")
        grpc_stopped = asyncio.ensure_future(self.grpc_server.stop(SHUTDOWN_GRACE_SECONDS))
        if runner is not None:
            for site in list(runner.sites):
                await site.stop()  # no new connections
            # aiohttp's own shutdown stops reading request bodies still arriving; drain first.
            if not await rest.drain(SHUTDOWN_GRACE_SECONDS):
                _log(f"{rest.in_flight} REST requests still running after {SHUTDOWN_GRACE_SECONDS} s; closing")
            await runner.cleanup()
            rest.close()
        await grpc_stopped
        self._stop.set()

    def shutdown(self) -> None:
        self._stop.set()
        self.core.shutdown()
        self.predictor.close()


class _OneLineHttpErrors(logging.Filter):
    """A client's malformed HTTP request is the client's problem: one log line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            record.msg, record.args = f"bad HTTP request refused: {record.exc_info[1]}".replace("\n", " "), ()
            record.exc_info = None
        return True


def _quiet_logs() -> None:
    logging.basicConfig(format="[pt2tf-serve] %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_OneLineHttpErrors())
    tf.get_logger().setLevel(logging.ERROR)  # deprecation notices of the v1 loader TF Serving's path needs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("--help", "-h", "--helpfull") for arg in argv):
        print(help_text())
        return 0
    try:
        options = parse_flags(argv)
        server = ModelServer(options)
    except (FlagError, ConfigError) as exc:
        print(f"pt2tf-serve: error: {exc}", file=sys.stderr)
        return 2
    _quiet_logs()
    # TF Serving's log says this at start (TensorFlow's own notice, muted here with its other start-up
    # lines); the kernels differ by CPU kind and by TF_ENABLE_ONEDNN_OPTS, so name them and why.
    _log(f"{cpu_info().describe()}: {onednn_report()[1]}")
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()

    def request_stop(signum, _frame=None):
        _log(f"received {signal.Signals(signum).name}")
        loop.call_soon_threadsafe(stopping.set)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        server.start_models()
        loop.run_until_complete(server.serve(stopping))
    except ServingError as exc:
        print(f"Failed to start server. Error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pt2tf-serve: error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.shutdown()
        loop.close()
    _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
