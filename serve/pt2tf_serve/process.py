"""Run pt2tf-serve as a child process on free loopback ports, and stop it for sure: for tests and benches."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_LINE = "[pt2tf-serve] ready"
# docker/config/: the flags and config files compose gives the real image (a source checkout's)
DOCKER_CONFIG = Path(__file__).resolve().parents[2] / "docker" / "config"


def free_port() -> int:
    """A TCP port on 127.0.0.1 the OS says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_flags_file(path: Path) -> list[str]:
    """Flags one per line, '#' comments skipped (docker/config/server.flags)."""
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def config_copy(
    folder: Path, models_config: Path | None = None, batching: str | None = None, model: str | None = None
) -> Path:
    """A copy of docker/config/ in `folder`, with another models.config or batching parameters if given.

    `model` renames the one model docker/config/models.config serves (resnet18) to `model`, base path
    /models/<model>, its version policy and all kept: the same config for another exported model.
    """
    shutil.copytree(DOCKER_CONFIG, folder)
    if models_config is not None:
        shutil.copy(models_config, folder / "models.config")
    if model is not None:
        edit_models_config(folder / "models.config", model=model)
    if batching is not None:
        (folder / "batching.config").write_text(batching)
    return folder


def edit_models_config(path: Path, model: str | None = None, versions: list[int] | None = None) -> None:
    """Edit a models.config as a message (its text may be one-line or protobuf's multi-line form): `model` renames
    the one model it serves to `model`, base path /models/<model>, its version policy kept; `versions` pins every
    model it serves to those versions (`specific`)."""
    from google.protobuf import text_format

    from .config import load_model_config

    config = load_model_config(path)
    entries = config.model_config_list.config
    if model is not None:
        if len(entries) != 1:
            raise ValueError(f"{path} serves several models: name the one to serve in it")
        entries[0].name, entries[0].base_path = model, f"/models/{model}"
    if versions:
        for entry in entries:
            entry.model_version_policy.Clear()
            entry.model_version_policy.specific.versions.extend(versions)
    path.write_text(text_format.MessageToString(config))


def read_env_file(path: Path) -> dict[str, str]:
    """VARIABLE=value lines, '#' comments skipped (docker/config/server.env, as compose's env_file reads it)."""
    env = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"{path}:{number}: {line!r} is not VARIABLE=value")
        env[name.strip()] = value.strip()
    return env


def server_env(flags: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: server.env of the folder mounted at /config, under the variables already set.

    Compose and the Deployment give the real server the same file; here a variable set in the caller's
    environment wins, so `TF_ENABLE_ONEDNN_OPTS=0 make serve` tries the other setting without an edit.
    """
    environ = dict(os.environ if environ is None else environ)
    config = [flag.split("=", 1)[1].rsplit(":", 1)[0] for flag in flags if flag.startswith("--volume=") and
              flag.endswith(":/config")]  # fmt: skip
    path = Path(config[-1]) / "server.env" if config else None
    if path is None or not path.is_file():
        return environ
    return {**read_env_file(path), **environ}


def embedded_flags(config: Path, models: Path, *extra: str) -> list[str]:
    """server.flags of a config folder, its container paths mapped onto `config` and `models`, then `extra`."""
    flags = read_flags_file(config / "server.flags")
    return [*flags, f"--volume={config}:/config", f"--volume={models}:/models", *extra]


class Spawned:
    """A child started with posix_spawn, with the part of subprocess.Popen's interface the callers use.

    Not fork: a load generator that has used gRPC may fork while gRPC's poller threads run, and
    gRPC's fork handlers then abort the child before it execs (seen here as exit -6, "epoll_wait
    error: Bad file descriptor"). posix_spawn runs no fork handlers.
    """

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, err_path: Path | None = None):
        # stdout to log_path; stderr there too, or to err_path when given
        write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), write, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2) if err_path is None else (os.POSIX_SPAWN_OPEN, 2, str(err_path), write, 0o600),
        ]
        # setsid: its own process group, which a stop can reach whole, and which a Ctrl-C meant for us misses
        self.pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


def process_state(pid: int) -> str:
    """The process's state letter from /proc (T: stopped, Z: exited, not reaped yet), or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def run_spawned(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run(argv, capture_output=True, text=True, timeout=...) by posix_spawn, for a process that has
    used gRPC (see Spawned): a fork there can abort the child before it execs (exit -6, "epoll_wait error").
    The child gets its own process group, killed whole on timeout (TimeoutExpired, as subprocess.run)."""
    program = argv[0] if os.sep in argv[0] else shutil.which(argv[0])
    if program is None:
        raise FileNotFoundError(f"{argv[0]}: not found on PATH")
    with tempfile.TemporaryDirectory(prefix="pt2tf-run-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        child = Spawned([program, *argv[1:]], dict(os.environ if env is None else env), out, err_path=err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise subprocess.TimeoutExpired(argv, timeout) from None
        read = lambda path: path.read_text(errors="replace")  # noqa: E731
        return subprocess.CompletedProcess(argv, code, read(out), read(err))


class ServerProcess:
    """`with ServerProcess(flags) as server:` — started, ready, and stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        flags: list[str],
        startup_timeout: float = 300.0,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ):
        self.grpc_port = free_port()
        self.rest_port = free_port()
        # Later flags win, so the ports asked of the OS override any in `flags`.
        self.flags = [*flags, f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}"]
        self.startup_timeout = startup_timeout
        self.env = {**server_env(self.flags), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        handle, name = tempfile.mkstemp(prefix="pt2tf-serve-", suffix=".log")
        os.close(handle)  # the child opens it by name
        self.log_path = Path(name)
        self.process: Spawned | None = None
        self.python = python  # the interpreter of an env with TensorFlow and the server's packages

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def start(self) -> ServerProcess:
        self.process = Spawned([self.python, "-m", "pt2tf_serve.server", *self.flags], self.env, self.log_path)
        try:
            self._wait_until_ready()
        except BaseException:  # Ctrl-C included: a server in its own session would outlive us
            self.close()  # the error names the log's last lines; nothing is left in the temp folder
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pt2tf-serve exited with {self.process.returncode} before it was ready:\n{self.tail()}"
                )
            time.sleep(0.2)
        raise RuntimeError(f"pt2tf-serve was not ready within {self.startup_timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        noise = ("computation_placer", "cuda_", "cuInit", "absl::InitializeLog")
        kept = [line for line in self.log().splitlines() if not any(n in line for n in noise)]
        return "\n".join(kept[-lines:])

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait for a graceful exit, SIGKILL the group if it does not come; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout)

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory of the server (VmRSS now, or VmHWM: the peak so far)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/{self.process.pid}/status")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def close(self) -> int | None:
        """stop(), then remove the log: for a caller done with the server and with what it printed."""
        code = self.stop()
        self.log_path.unlink(missing_ok=True)
        return code

    def __exit__(self, *exc) -> None:
        self.close()
