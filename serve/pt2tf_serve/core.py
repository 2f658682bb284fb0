"""The served models and their versions: TF Serving's ServerCore, storage path source and manager in one place.

- The source polls each model's base path for integer version directories and applies the
  version policy (latest N, all, specific) to choose the aspired versions.
- The manager loads aspired versions (warmup included) before it unloads the ones no longer
  aspired, and unloads an old version only once another is AVAILABLE: TF Serving's
  availability-preserving policy, so a version swap under load fails no request. A version that
  fails to load is shown as END with its error, and what served before keeps serving.
- Requests hold a version while they use it; unloading waits for them (and its batch queues).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.config import model_server_config_pb2

from .batching import BatchQueue, SharedBatchScheduler
from .config import Batching, ConfigError, check_model_config
from .servable import Servable, Signature
from .status import ServingError

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


def log(message: str) -> None:
    """One line on stdout, prefixed as the server's own."""
    print(f"[pt2tf-serve] {message}", flush=True)


@dataclass
class Version:
    """One version of one model, and where it is in its lifecycle."""

    number: int
    path: Path
    state: str = START
    error: ServingError | None = None
    servable: Servable | None = None
    users: int = 0
    queues: dict[str, BatchQueue] = field(default_factory=dict)
    attempts: int = 0
    retry_at: float = 0.0


@dataclass
class Model:
    config: model_server_config_pb2.ModelConfig
    versions: dict[int, Version] = field(default_factory=dict)
    removed: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    def available(self) -> list[int]:
        return sorted(v for v, state in self.versions.items() if state.state == AVAILABLE)


def _on_disk(base_path: Path) -> dict[int, Path]:
    """Integer version directories under a base path (anything else, like a staging dir, is ignored)."""
    try:
        children = list(base_path.iterdir())
    except OSError:
        return {}
    return {int(p.name): p for p in children if p.name.isdigit() and p.is_dir()}


def aspired_versions(config: model_server_config_pb2.ModelConfig, on_disk: list[int]) -> list[int]:
    """The versions the model's version policy asks for, among those on disk."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return sorted(on_disk)
    if choice == "specific":
        return sorted(set(policy.specific.versions) & set(on_disk))
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return sorted(on_disk)[-count:]


class ServerCore:
    """Holds the served models; `lookup` hands a request one AVAILABLE version to run."""

    def __init__(
        self,
        session_config: tf.compat.v1.ConfigProto,
        tags: list[str],
        batching: Batching | None,
        allow_labels_for_unavailable: bool,
        max_load_retries: int,
        load_retry_interval: float,
        run_warmup: Callable[[Servable], None] | None,
        on_batch=None,
        host_path: Callable[[str], Path] = Path,
    ):
        self._session_config = session_config
        self._tags = tags
        self.batching = batching
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._max_load_retries = max_load_retries
        self._load_retry_interval = load_retry_interval
        self._run_warmup = run_warmup
        self.host_path = host_path  # a configured base path → where it is here (--volume)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._poll_lock = threading.Lock()  # one poll at a time: the poll thread and reloads
        self.models: dict[str, Model] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.scheduler = SharedBatchScheduler(batching.num_batch_threads, on_batch) if batching else None

    # ------------------------------------------------------------------ config

    def set_config(self, config: model_server_config_pb2.ModelServerConfig, source: str, poll_seconds: float) -> None:
        """Serve exactly the models `config` lists, as TF Serving's ReloadConfig: add, update, remove.

        Blocks, as TF Serving does, until every listed model has an AVAILABLE version or its
        aspired versions have failed for good; raises UNKNOWN naming those that failed.
        """
        check_model_config(config, source)
        wanted = {m.name: m for m in config.model_config_list.config}
        for model in wanted.values():
            if not Path(model.base_path).is_absolute():
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}",
                )
        with self._lock:
            for name, model in self.models.items():
                platform = wanted[name].model_platform if name in wanted else ""
                if platform not in ("", model.config.model_platform or "tensorflow"):
                    raise ServingError(
                        "INVALID_ARGUMENT",
                        f"Illegal to change a model's platform. For model {name} platform was "
                        f"{model.config.model_platform} and new platform requested is {platform}",
                    )
            self._apply_labels(wanted)  # before loading, as TF Serving validates them
            for name, model_config in wanted.items():
                if name in self.models and not self.models[name].removed:
                    self.models[name].config = model_config
                else:
                    self.models[name] = Model(model_config)
            for name, model in self.models.items():
                if name not in wanted:
                    model.removed = True
        self._settle(list(wanted), poll_seconds)

    def _settle(self, names: list[str], poll_seconds: float) -> None:
        warned = set()
        while True:
            self.poll()
            failed, waiting = [], False
            with self._lock:
                for name in names:
                    model = self.models[name]
                    if model.available():
                        continue
                    aspired = [v for v in model.versions.values() if v.state != END or v.error is not None]
                    if aspired and all(v.state == END for v in aspired):
                        failed += [(name, v) for v in aspired]
                        continue
                    waiting = True
                    if not aspired and name not in warned:
                        warned.add(name)
                        log(
                            f"No versions of servable {name} found under base path {model.config.base_path}. "
                            "Did you forget to name your leaf directory as a number (eg. '/1/')?"
                        )
            if not waiting:
                break
            time.sleep(max(poll_seconds, 0.2))
        if failed:
            details = ", ".join(
                f"{{name: {n} version: {v.number} due to error: {v.error.code}: {v.error.message}}}" for n, v in failed
            )
            raise ServingError("UNKNOWN", f"{len(failed)} model(s) did not become available: {{{details}, }}")

    def _apply_labels(self, wanted: dict[str, model_server_config_pb2.ModelConfig]) -> None:
        labels = {}
        for name, model_config in wanted.items():
            labels[name] = dict(model_config.version_labels)
            model = self.models.get(name)
            available = model.available() if model else []
            for label, version in labels[name].items():
                is_new = label not in self.labels.get(name, {})
                if version in available or (is_new and self._allow_unavailable_labels):
                    continue
                raise ServingError(
                    "FAILED_PRECONDITION",
                    f"Request to assign label to version {version} of model {name}, which is not currently "
                    "available for inference",
                )
        self.labels = labels

    # ------------------------------------------------------------------ lifecycle

    def poll(self) -> None:
        """One pass of the storage path source and the manager: load what is aspired, then unload."""
        with self._poll_lock:
            with self._lock:
                models = list(self.models.values())
            for model in models:
                self._poll_model(model)
            with self._lock:
                for name in [n for n, m in self.models.items() if m.removed and not m.versions]:
                    del self.models[name]

    def _poll_model(self, model: Model) -> None:
        on_disk = {} if model.removed else _on_disk(self.host_path(model.config.base_path))
        aspired = set(aspired_versions(model.config, list(on_disk)))
        for number in sorted(aspired):
            with self._lock:
                version = model.versions.setdefault(number, Version(number, on_disk[number]))
            if self._should_try(version):
                self._load(model, version)
        with self._lock:
            # Availability preserving: unload only what another AVAILABLE version replaces.
            # A model that is removed from the config, or whose versions all left the disk, unloads everything.
            keep_old = not model.removed and bool(aspired) and not (set(model.available()) & aspired)
            doomed = [
                v for n, v in model.versions.items() if n not in aspired and v.state == AVAILABLE and not keep_old
            ]
            for n, v in list(model.versions.items()):
                if n in aspired:
                    continue
                if v.state == LOADING and v.error is not None:  # a retry no longer wanted: give up on it
                    v.state = END
                if v.state in (START, END) and (model.removed or n not in on_disk):
                    del model.versions[n]
        for version in doomed:
            self._unload(model, version)

    def _should_try(self, version: Version) -> bool:
        if version.state == START or (version.state == END and version.error is None):
            return True  # new, or unloaded earlier and aspired again
        return version.state == LOADING and version.error is not None and time.monotonic() >= version.retry_at

    def _load(self, model: Model, version: Version) -> None:
        with self._lock:
            version.state, version.error = LOADING, None
            self._changed.notify_all()
        log(f"loading {model.name} version {version.number} from {version.path}")
        started = time.monotonic()
        servable = None
        try:
            servable = Servable(model.name, version.number, version.path, self._session_config, self._tags)
            if self._run_warmup is not None:
                self._run_warmup(servable)
        except Exception as exc:  # any failure to load leaves the version END with its error
            if servable is not None:
                servable.close()
            error = exc if isinstance(exc, ServingError) else ServingError(_code_of(exc), _message_of(exc))
            with self._lock:
                version.attempts += 1
                # As TF Serving's LoaderHarness: LOADING while retries remain, END with the error after the last.
                retrying = version.attempts <= self._max_load_retries
                version.state, version.error, version.servable = (LOADING if retrying else END), error, None
                version.retry_at = time.monotonic() + self._load_retry_interval
                self._changed.notify_all()
            then = f"retry {version.attempts} of {self._max_load_retries} in {self._load_retry_interval:.0f} s"
            log(
                f"failed to load {model.name} version {version.number}: {error.code}: {error.message}"
                f" ({then if retrying else 'giving up'})"
            )
            return
        with self._lock:
            version.servable, version.state = servable, AVAILABLE
            self._changed.notify_all()
        log(f"{model.name} version {version.number} is AVAILABLE ({time.monotonic() - started:.1f} s)")

    def _unload(self, model: Model, version: Version, timeout: float = 60.0) -> None:
        with self._lock:
            version.state = UNLOADING
            queues, version.queues = list(version.queues.values()), {}
            self._changed.notify_all()
        log(f"unloading {model.name} version {version.number}")
        for queue in queues:
            queue.close(timeout)
        with self._lock:
            deadline = time.monotonic() + timeout
            while version.users and time.monotonic() < deadline:
                self._changed.wait(timeout=0.1)
            servable, version.servable = version.servable, None
            version.state = END
            self._changed.notify_all()
        if servable is not None:
            servable.close()

    def shutdown(self) -> None:
        """Unload every version and stop the batch threads."""
        with self._lock:
            models = list(self.models.values())
        for model in models:
            for version in list(model.versions.values()):
                if version.state == AVAILABLE:
                    self._unload(model, version, timeout=10.0)
        if self.scheduler is not None:
            self.scheduler.stop()

    # ------------------------------------------------------------------ requests

    def resolve(self, name: str, version: int | None, label: str | None) -> tuple[Model, Version]:
        """The version a model spec names, AVAILABLE, or TF Serving's error for it."""
        if not name:
            raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
        with self._lock:
            model = self.models.get(name)
            if label is not None:
                if model is None or label not in self.labels.get(name, {}):
                    raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
                version = self.labels[name][label]
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            if model is None or model.removed:
                raise ServingError("NOT_FOUND", f"Servable not found for request: {request}")
            available = model.available()
            number = (available[-1] if available else None) if version is None else version
            state = model.versions.get(number) if number is not None else None
            if state is None or state.state != AVAILABLE:
                raise ServingError("NOT_FOUND", f"Servable not found for request: {request}")
            return model, state

    @contextmanager
    def hold(self, name: str, version: int | None, label: str | None) -> Iterator[Version]:
        """A version held for the duration of one request: it will not unload meanwhile."""
        with self._lock:
            _, held = self.resolve(name, version, label)
            held.users += 1
        try:
            yield held
        finally:
            with self._lock:
                held.users -= 1
                self._changed.notify_all()

    def queue(self, version: Version, signature: Signature) -> BatchQueue | None:
        """The batch queue of a held version's signature, or None when batching does not apply.

        A version already unloading gets no new queue: its last requests run directly.
        """
        if self.scheduler is None or not signature.batchable:
            return None
        with self._lock:
            if version.state != AVAILABLE:
                return None
            queue = version.queues.get(signature.name)
            if queue is None:
                servable = version.servable
                outputs = tuple(signature.outputs)

                def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                    return servable.run(signature, inputs, outputs)

                name = f"model {servable.name} version {version.number} signature {signature.name}"
                queue = version.queues[signature.name] = self.scheduler.add_queue(self.batching, run, name)
            return queue

    def status(self, name: str, version: int | None) -> list[Version]:
        """Versions of a model, newest first, as GetModelStatus lists them."""
        with self._lock:
            model = self.models.get(name)
            if model is None or not model.versions:
                raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
            if version is not None:
                if version not in model.versions:
                    raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
                return [model.versions[version]]
            return [model.versions[v] for v in sorted(model.versions, reverse=True)]


def _code_of(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    names = {5: "NOT_FOUND", 3: "INVALID_ARGUMENT", 9: "FAILED_PRECONDITION", 13: "INTERNAL"}
    return names.get(code, "UNKNOWN")


def _message_of(exc: Exception) -> str:
    return getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"


__all__ = ["AVAILABLE", "END", "LOADING", "START", "UNLOADING", "ConfigError", "ServerCore", "Version"]
