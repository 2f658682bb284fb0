"""The server's parts that need no model and no process: flags, config files, batching, metrics, JSON tensors.

Each test holds a piece to TF Serving's documented or source-verified behaviour (command line
syntax, text-proto config files and their messages, SharedBatchScheduler semantics, the
Prometheus page, the REST JSON encoding). Batching runs on real threads with a pure-numpy
`run`; every scheduler is stopped in teardown.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from pt2tf_serve import flags
from pt2tf_serve.batching import QUEUE_FULL, BatchQueue, BatchStats, QueueClosed, SharedBatchScheduler
from pt2tf_serve.config import (
    DEFAULT_PROMETHEUS_PATH,
    Batching,
    ConfigError,
    load_batching,
    load_model_config,
    load_monitoring,
    load_platform_config,
)
from pt2tf_serve.cpu import CPUINFO_ENV, bf16_refusal, cpu_info
from pt2tf_serve.flags import FlagError, parse_flags
from pt2tf_serve.json_tensor import decode_json, inputs_from_json, predict_response
from pt2tf_serve.metrics import Metrics
from pt2tf_serve.protos import (
    BatchingParameters,
    MonitoringConfig,
    PlatformConfigMap,
    SavedModelBundleSourceAdapterConfig,
)
from pt2tf_serve.servable import Signature, TensorSpec
from pt2tf_serve.status import ServingError

ROOT = Path(__file__).resolve().parents[2]
DOCKER_CONFIG = ROOT / "docker" / "config"
CONFORMANCE_CONFIG = Path(__file__).parent / "conformance" / "models.config"
BASE = ["--model_base_path=/models/resnet18"]
WAIT = 10  # seconds: a bound against hangs, never a timing assertion


# ---------------------------------------------------------------------------- flags


def test_flags_use_tf_serving_names_and_defaults():
    options = parse_flags(BASE)
    assert (options.port, options.rest_api_port, options.model_name) == (8500, 0, "default")
    assert options.model_base_path == "/models/resnet18"
    assert options.enable_batching is False and options.enable_model_warmup is True


def test_flags_take_name_equals_value():
    options = parse_flags([*BASE, "--port=9000", "--rest_api_port=9001", "--model_name=resnet18"])
    assert (options.port, options.rest_api_port, options.model_name) == (9000, 9001, "resnet18")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--enable_batching"], True),
        (["--enable_batching=true"], True),
        (["--enable_batching=false"], False),
        (["--enable_batching", "--enable_batching=false"], False),
        (["--enable_batching=false", "--enable_batching"], True),
    ],
)
def test_bool_flags_are_bare_or_true_false_and_the_last_one_wins(args, expected):
    assert parse_flags([*BASE, *args]).enable_batching is expected


def test_a_later_flag_overrides_an_earlier_one():
    options = parse_flags([*BASE, "--port=9000", "--model_name=a", "--port=9100", "--model_name=b"])
    assert (options.port, options.model_name) == (9100, "b")


def test_volume_is_repeatable_and_accumulates():
    options = parse_flags([*BASE, "--volume=/srv/config:/config", "--volume=/srv/models:/models"])
    assert options.volume == ("/srv/config:/config", "/srv/models:/models")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--no_such_flag=1"], "--no_such_flag=1"),
        (["--modelname=x"], "--modelname=x"),
        (["stray"], "stray"),
        (["--port", "8500"], "--port"),  # TF Serving has no space-separated form
        (["--port=85OO"], "--port"),
        (["--rest_api_timeout_in_ms=1.5"], "--rest_api_timeout_in_ms"),
        (["--enable_batching=maybe"], "--enable_batching"),
    ],
)
def test_a_bad_argument_is_a_flag_error_naming_it(args, named):
    with pytest.raises(FlagError) as error:
        parse_flags([*BASE, *args])
    assert named in str(error.value)


def test_neither_base_path_nor_config_file_is_an_error():
    with pytest.raises(FlagError, match="--model_base_path") as error:
        parse_flags(["--model_name=resnet18"])
    assert "--model_config_file" in str(error.value)
    assert parse_flags(["--model_config_file=/config/models.config"]).model_config_file == "/config/models.config"


def test_batching_parameters_file_without_enable_batching_is_tf_servings_error():
    with pytest.raises(FlagError) as error:
        parse_flags([*BASE, "--batching_parameters_file=/config/batching.config"])
    assert str(error.value) == (
        "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
    )
    parse_flags([*BASE, "--enable_batching", "--batching_parameters_file=/config/batching.config"])


def test_rest_port_equal_to_grpc_port_is_an_error():
    with pytest.raises(FlagError, match="9000"):
        parse_flags([*BASE, "--port=9000", "--rest_api_port=9000"])


def test_host_path_maps_through_the_longest_matching_volume(tmp_path):
    models, special = tmp_path / "models", tmp_path / "special"
    options = parse_flags([*BASE, f"--volume={models}:/models", f"--volume={special}:/models/special/"])
    assert options.host_path("/models/resnet18/1") == models.resolve() / "resnet18" / "1"
    assert options.host_path("/models") == models.resolve()
    assert options.host_path("/models/special/1") == special.resolve() / "1"
    assert options.host_path("/models/specialist") == models.resolve() / "specialist"
    assert options.host_path("/modelsx/a") == Path("/modelsx/a")  # a prefix of the name is not a mount
    assert options.host_path("/config/models.config") == Path("/config/models.config")


def test_help_text_lists_every_flag():
    text = flags.help_text()
    for name in flags.FLAGS:
        assert f"--{name}=" in text


# ---------------------------------------------------------------------------- config: models.config

VALID_MODELS = """\
model_config_list {
  config {
    name: "latest_model"
    base_path: "/models/a"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
  config {
    name: "all_model"
    base_path: "/models/b"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "specific_model"
    base_path: "/models/c"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
}
"""


def write(tmp_path: Path, text: str, name: str = "file.config") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_model(body: str) -> str:
    return f"model_config_list {{\n  config {{\n{body}\n  }}\n}}\n"


def test_a_valid_models_config_with_every_policy_and_labels_parses(tmp_path):
    config = load_model_config(write(tmp_path, VALID_MODELS))
    latest, every, specific = config.model_config_list.config
    assert (latest.name, latest.base_path) == ("latest_model", "/models/a")
    assert latest.model_version_policy.latest.num_versions == 2
    assert every.model_version_policy.WhichOneof("policy_choice") == "all"
    assert list(specific.model_version_policy.specific.versions) == [1, 3]
    assert dict(specific.version_labels) == {"stable": 1, "canary": 3}


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("model_config_lis {\n  config { name: 'x' base_path: '/m' }\n}\n", 1, "model_config_lis"),
        (one_model('    nam: "x"\n    base_path: "/m"'), 3, "nam"),
        (
            one_model('    name: "x"\n    base_path: "/m"\n    model_version_policy { latest { num_version: 1 } }'),
            5,
            "num_version",
        ),
    ],
)
def test_a_typo_in_models_config_names_file_line_and_field(tmp_path, text, line, field):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_model_config(path)
    message = str(error.value)
    assert f"{path}:{line}:" in message
    assert f'"{field}"' in message


TF_MODEL = '    name: "x"\n    base_path: "/m"\n    model_platform: "tensorflow"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'model_config_list {\n  config { name: "x" base_path: "/a" model_platform: "tensorflow" }\n'
            '  config { name: "x" base_path: "/b" }\n}\n',
            "'x' appears twice",
        ),
        (one_model('    name: "x"'), "model 'x' has no base_path"),
        (one_model('    name: "x"\n    base_path: "/m"\n    model_platform: "pytorch"'), "model_platform 'pytorch'"),
        (one_model('    name: "x"\n    base_path: "/m"'), "neither ModelServerConfig::model_type"),
        (
            one_model(TF_MODEL + '\n    version_labels { key: "not-a-label" value: 1 }'),
            "version label 'not-a-label' is not a valid label",
        ),
        (
            one_model(TF_MODEL + '\n    version_labels { key: "1st" value: 1 }'),
            "version label '1st' is not a valid label",
        ),
    ],
)
def test_a_models_config_tf_serving_refuses_is_a_config_error_naming_the_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_model_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read model config file"):
        load_model_config(tmp_path / "absent.config")


@pytest.mark.parametrize("path", [DOCKER_CONFIG / "models.config", CONFORMANCE_CONFIG], ids=["docker", "conformance"])
def test_the_repositorys_models_configs_parse(path):
    (model,) = load_model_config(path).model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("resnet18", "/models/resnet18", "tensorflow")


# ---------------------------------------------------------------------------- config: batching

TF_SERVING_EXAMPLE = (
    "max_batch_size { value: 32 } batch_timeout_micros { value: 1000 } num_batch_threads { value: 4 } "
    "allowed_batch_sizes: 8 allowed_batch_sizes: 32 pad_variable_length_inputs: true"
)


def test_tf_servings_documented_batching_example_parses(tmp_path):
    batching = load_batching(write(tmp_path, TF_SERVING_EXAMPLE), num_cores=2)
    assert batching == Batching(
        max_batch_size=32,
        batch_timeout_micros=1000,
        max_enqueued_batches=10,
        num_batch_threads=4,
        allowed_batch_sizes=(8, 32),
        pad_variable_length_inputs=True,
    )


def test_batching_without_a_file_has_tf_servings_defaults():
    batching = load_batching(None, num_cores=6)
    assert (batching.max_batch_size, batching.batch_timeout_micros) == (1000, 0)
    assert (batching.max_enqueued_batches, batching.num_batch_threads) == (10, 6)
    assert batching.allowed_batch_sizes == () and not batching.enable_large_batch_splitting
    assert batching.execution_batch_size == 1000


def test_the_repositorys_batching_config_parses():
    batching = load_batching(DOCKER_CONFIG / "batching.config", num_cores=2)
    assert batching.enable_large_batch_splitting
    assert batching.max_batch_size >= batching.execution_batch_size == batching.max_execution_batch_size > 0


@pytest.mark.parametrize(
    "text",
    [
        "max_batch_size { value: 0 }",
        "max_batch_size { value: -8 }",
        "num_batch_threads { value: 0 }",
        "max_enqueued_batches { value: -1 }",
        "batch_timeout_micros { value: -1 }",
    ],
)
def test_a_zero_or_negative_batching_value_is_refused(tmp_path, text):
    field = text.split()[0]
    with pytest.raises(ConfigError, match=field):
        load_batching(write(tmp_path, text), num_cores=2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "max_batch_size { value: 32 } allowed_batch_sizes: 16 allowed_batch_sizes: 8 allowed_batch_sizes: 32",
            "increasing",
        ),
        (
            "max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 8 allowed_batch_sizes: 32",
            "increasing",
        ),
        ("max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 16", "max_batch_size (32)"),
        (
            "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
            "max_execution_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 64",
            "max_execution_batch_size (32)",
        ),
    ],
)
def test_allowed_batch_sizes_follow_tf_servings_rules(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_batching(path, num_cores=2)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_allowed_batch_sizes_may_end_at_the_execution_size_when_splitting(tmp_path):
    text = (
        "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 32"
    )
    batching = load_batching(write(tmp_path, text), num_cores=2)
    assert (batching.execution_batch_size, batching.allowed_batch_sizes) == (32, (8, 32))


def test_a_bad_batching_file_names_file_and_line(tmp_path):
    path = write(tmp_path, "max_batch_size { value: 32 }\n\nbatch_timeout { value: 1000 }\n")
    with pytest.raises(ConfigError) as error:
        load_batching(path, num_cores=2)
    assert f"{path}:3:" in str(error.value) and '"batch_timeout"' in str(error.value)


def test_a_negative_max_execution_batch_size_is_refused(tmp_path):
    text = "enable_large_batch_splitting { value: true } max_execution_batch_size { value: -4 }"
    with pytest.raises(ConfigError, match="max_execution_batch_size"):
        load_batching(write(tmp_path, text), num_cores=2)


# ---------------------------------------------------------------------------- config: monitoring


def test_monitoring_enabled_without_a_path_uses_tf_servings_default(tmp_path):
    assert load_monitoring(write(tmp_path, "prometheus_config { enable: true }")) == DEFAULT_PROMETHEUS_PATH
    assert DEFAULT_PROMETHEUS_PATH == "/monitoring/prometheus/metrics"


def test_monitoring_takes_the_configured_path(tmp_path):
    text = 'prometheus_config { enable: true, path: "/metrics" }'  # TF Serving's docs write the comma
    assert load_monitoring(write(tmp_path, text)) == "/metrics"


def test_monitoring_disabled_or_absent_is_none(tmp_path):
    assert load_monitoring(write(tmp_path, 'prometheus_config { enable: false path: "/metrics" }')) is None
    assert load_monitoring(write(tmp_path, "")) is None
    assert load_monitoring(None) is None


def test_a_monitoring_path_without_a_leading_slash_is_refused(tmp_path):
    path = write(tmp_path, 'prometheus_config {\n  enable: true\n  path: "metrics"\n}\n')
    with pytest.raises(ConfigError, match="must start with '/'") as error:
        load_monitoring(path)
    assert f"{path}:3" in str(error.value)


def test_the_repositorys_monitoring_config_parses():
    assert load_monitoring(DOCKER_CONFIG / "monitoring.config") == "/monitoring/prometheus/metrics"


# ---------------------------------------------------------------------------- protos


def _repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf ≥ 5.29; `label` is gone in 7.x
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _fields(message) -> dict[str, tuple]:
    """name → (number, type name or wrapper message, repeated) of a message's fields."""
    types = {8: "bool", 3: "int64", 9: "string"}  # FieldDescriptor.TYPE_*
    return {
        f.name: (f.number, f.message_type.full_name if f.message_type else types[f.type], _repeated(f))
        for f in message.DESCRIPTOR.fields
    }


def test_batching_parameters_is_tf_servings_message():
    assert BatchingParameters.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    int64, string, boolean = "google.protobuf.Int64Value", "google.protobuf.StringValue", "google.protobuf.BoolValue"
    assert _fields(BatchingParameters) == {
        "max_batch_size": (1, int64, False),
        "batch_timeout_micros": (2, int64, False),
        "max_enqueued_batches": (3, int64, False),
        "num_batch_threads": (4, int64, False),
        "thread_pool_name": (5, string, False),
        "allowed_batch_sizes": (6, "int64", True),
        "pad_variable_length_inputs": (7, "bool", False),
        "enable_large_batch_splitting": (8, boolean, False),
        "max_execution_batch_size": (9, int64, False),
    }


def test_monitoring_config_is_tf_servings_message():
    assert MonitoringConfig.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"
    assert _fields(MonitoringConfig) == {"prometheus_config": (1, "tensorflow.serving.PrometheusConfig", False)}
    prometheus = MonitoringConfig.DESCRIPTOR.fields_by_name["prometheus_config"].message_type
    assert {f.name: (f.number, f.type) for f in prometheus.fields} == {"enable": (1, 8), "path": (2, 9)}


def test_batching_parameters_round_trip_in_tf_servings_wire_format():
    params = BatchingParameters()
    params.max_batch_size.value = 32
    params.allowed_batch_sizes.extend([8, 32])
    # field 1 (Int64Value{value=32}) then packed field 6: the bytes TF Serving's own message writes
    assert params.SerializeToString() == b"\x0a\x02\x08\x20\x32\x02\x08\x20"


# ---------------------------------------------------------------------------- batching


class Model:
    """A pure-numpy `run`: y = 2·x. Records every batch; waits while its gate is shut; refuses negative rows."""

    def __init__(self):
        self.batches: list[np.ndarray] = []
        self.entered = threading.Event()  # set once a batch is running
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self._lock:
            self.batches.append(x.copy())
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise RuntimeError("the test never opened the gate")
        if (x < 0).any():
            raise ValueError(f"negative input in a batch of {len(x)}")
        return {"y": x * 2}

    @property
    def sizes(self) -> list[int]:
        with self._lock:
            return [len(b) for b in self.batches]


def block(start: int, rows: int) -> np.ndarray:
    """`rows` distinct rows of 2 floats, numbered from `start`."""
    return np.arange(2 * start, 2 * (start + rows), dtype=np.float32).reshape(rows, 2)


def submit(queue: BatchQueue, x: np.ndarray):
    return queue.submit({"x": x}, len(x))


def answer(future) -> np.ndarray:
    return future.result(timeout=WAIT)["y"]


@pytest.fixture
def start_scheduler():
    """start_scheduler(threads, on_batch) → a SharedBatchScheduler, stopped in teardown (its models' gates opened)."""
    schedulers: list[SharedBatchScheduler] = []
    models: list[Model] = []

    def start(threads: int, on_batch=None, model: Model | None = None) -> SharedBatchScheduler:
        scheduler = SharedBatchScheduler(threads, on_batch=on_batch)
        schedulers.append(scheduler)
        if model is not None:
            models.append(model)
        return scheduler

    yield start
    for model in models:
        model.gate.set()
    for scheduler in schedulers:
        scheduler.stop()


@pytest.fixture
def make_queue(start_scheduler):
    """make_queue(**Batching fields) → (queue, model, batch stats) on a scheduler of num_batch_threads threads."""

    def make(**options) -> tuple[BatchQueue, Model, list[BatchStats]]:
        batching = Batching(**{"num_batch_threads": 1, **options})
        stats: list[BatchStats] = []
        model = Model()
        scheduler = start_scheduler(batching.num_batch_threads, lambda _, s: stats.append(s), model)
        return scheduler.add_queue(batching, model, "model m version 1 signature serving_default"), model, stats

    return make


def test_requests_within_the_timeout_share_one_batch(make_queue):
    queue, model, _ = make_queue(max_batch_size=8, batch_timeout_micros=300_000)
    parts = [block(0, 1), block(1, 2), block(3, 1)]
    futures = [submit(queue, x) for x in parts]
    for future, x in zip(futures, parts, strict=True):
        np.testing.assert_array_equal(answer(future), x * 2)
    assert model.sizes == [4]
    np.testing.assert_array_equal(model.batches[0], np.concatenate(parts))


def test_a_full_batch_runs_without_waiting_for_the_timeout(make_queue):
    queue, model, _ = make_queue(max_batch_size=4, batch_timeout_micros=600_000_000)
    futures = [submit(queue, block(0, 2)), submit(queue, block(2, 2))]
    np.testing.assert_array_equal(answer(futures[1]), block(2, 2) * 2)  # long before the 10-minute timeout
    np.testing.assert_array_equal(answer(futures[0]), block(0, 2) * 2)
    assert model.sizes == [4]


def test_batches_fill_up_to_the_execution_size_and_a_request_never_spans_two(make_queue):
    queue, model, _ = make_queue(max_batch_size=4, batch_timeout_micros=200_000)
    parts = [block(0, 3), block(3, 2), block(5, 2)]
    futures = [submit(queue, x) for x in parts]
    for future, x in zip(futures, parts, strict=True):
        np.testing.assert_array_equal(answer(future), x * 2)
    assert model.sizes == [3, 4]  # 3 rows, then 2 + 2 once the second would not fit the first


def test_a_batch_is_padded_to_the_next_allowed_size_and_answers_are_unpadded(make_queue):
    queue, model, stats = make_queue(max_batch_size=8, allowed_batch_sizes=(2, 4, 8), batch_timeout_micros=200_000)
    parts = [block(0, 1), block(1, 2)]
    futures = [submit(queue, x) for x in parts]
    for future, x in zip(futures, parts, strict=True):
        np.testing.assert_array_equal(answer(future), x * 2)
    assert model.sizes == [4]
    # TF Serving pads with copies of the first row of the batch's last request
    np.testing.assert_array_equal(model.batches[0], np.concatenate([*parts, block(1, 1)]))
    assert [(s.input_size, s.padded_size) for s in stats] == [(3, 4)]


def test_a_large_request_is_split_into_batches_and_reassembled_in_order(make_queue):
    queue, model, _ = make_queue(
        max_batch_size=10, enable_large_batch_splitting=True, max_execution_batch_size=4, batch_timeout_micros=1000
    )
    x = block(0, 10)
    np.testing.assert_array_equal(answer(submit(queue, x)), x * 2)
    assert model.sizes == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(model.batches), x)


def test_split_parts_are_padded_and_the_padding_is_cut_off(make_queue):
    queue, model, _ = make_queue(
        max_batch_size=8,
        enable_large_batch_splitting=True,
        max_execution_batch_size=4,
        allowed_batch_sizes=(2, 4),
        batch_timeout_micros=1000,
    )
    x = block(0, 5)
    np.testing.assert_array_equal(answer(submit(queue, x)), x * 2)
    assert model.sizes == [4, 2]


@pytest.mark.parametrize("splitting", [False, True], ids=["no-splitting", "splitting"])
def test_a_request_larger_than_max_batch_size_is_invalid_argument(make_queue, splitting):
    options = {"enable_large_batch_splitting": True, "max_execution_batch_size": 2} if splitting else {}
    queue, model, _ = make_queue(max_batch_size=4, **options)
    with pytest.raises(ServingError) as error:
        submit(queue, block(0, 5))
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message == "Task size 5 is larger than maximum input batch size 4"
    assert model.sizes == []


def test_a_full_queue_refuses_at_once_with_unavailable(make_queue):
    queue, model, _ = make_queue(max_batch_size=2, max_enqueued_batches=2, batch_timeout_micros=0)
    model.gate.clear()
    running = submit(queue, block(0, 2))
    assert model.entered.wait(WAIT)  # the only thread is now busy with the first batch
    queued = [submit(queue, block(2, 2)), submit(queue, block(4, 2))]  # two full batches wait
    with pytest.raises(ServingError) as error:
        submit(queue, block(6, 1))
    assert error.value.code == "UNAVAILABLE"
    assert error.value.message.startswith(QUEUE_FULL)
    assert QUEUE_FULL == "The batch scheduling queue to which this task was submitted is full"
    model.gate.set()
    np.testing.assert_array_equal(answer(running), block(0, 2) * 2)
    np.testing.assert_array_equal(answer(queued[0]), block(2, 2) * 2)
    np.testing.assert_array_equal(answer(queued[1]), block(4, 2) * 2)
    assert model.sizes == [2, 2, 2]


def test_one_bad_request_fails_alone_and_its_batch_mates_are_answered(make_queue):
    queue, model, _ = make_queue(max_batch_size=4, batch_timeout_micros=300_000)
    good_1, bad, good_2 = block(0, 1), -block(1, 2), block(3, 1)
    futures = [submit(queue, x) for x in (good_1, bad, good_2)]
    np.testing.assert_array_equal(answer(futures[0]), good_1 * 2)
    np.testing.assert_array_equal(answer(futures[2]), good_2 * 2)
    with pytest.raises(ValueError, match="negative input"):
        answer(futures[1])
    assert model.sizes == [4, 1, 2, 1]  # the batch, then each request on its own


def test_a_request_cancelled_while_queued_is_not_run(make_queue):
    queue, model, _ = make_queue(max_batch_size=1)
    model.gate.clear()
    first = submit(queue, block(0, 1))
    assert model.entered.wait(WAIT)
    cancelled, last = submit(queue, block(1, 1)), submit(queue, block(2, 1))
    assert cancelled.cancel()
    model.gate.set()
    np.testing.assert_array_equal(answer(first), block(0, 1) * 2)
    np.testing.assert_array_equal(answer(last), block(2, 1) * 2)
    assert [b.tolist() for b in model.batches] == [block(0, 1).tolist(), block(2, 1).tolist()]


def test_a_request_cancelled_while_queued_gives_its_place_to_the_next_caller(make_queue):
    queue, model, _ = make_queue(max_batch_size=1, max_enqueued_batches=1)
    model.gate.clear()
    first = submit(queue, block(0, 1))
    assert model.entered.wait(WAIT)
    cancelled = submit(queue, block(1, 1))
    with pytest.raises(ServingError, match=QUEUE_FULL):
        submit(queue, block(2, 1))
    assert cancelled.cancel()  # its caller left (a deadline passed, a client disconnected)
    last = submit(queue, block(2, 1))  # refused with UNAVAILABLE were the cancelled request still queued
    model.gate.set()
    np.testing.assert_array_equal(answer(first), block(0, 1) * 2)
    np.testing.assert_array_equal(answer(last), block(2, 1) * 2)
    assert [b.tolist() for b in model.batches] == [block(0, 1).tolist(), block(2, 1).tolist()]


def test_close_drains_the_queue_then_refuses_new_work(make_queue):
    queue, model, _ = make_queue(max_batch_size=8, batch_timeout_micros=600_000_000)
    waiting = submit(queue, block(0, 3))
    assert queue.close(timeout=WAIT)  # runs the open batch now, not after its 10-minute timeout
    assert waiting.done()
    np.testing.assert_array_equal(answer(waiting), block(0, 3) * 2)
    with pytest.raises(QueueClosed):  # the predict path then runs the held version directly
        submit(queue, block(3, 1))
    assert model.sizes == [3]


def test_a_queue_closing_does_not_swallow_the_wake_up_of_another_queues_request(start_scheduler):
    old, new = Model(), Model()
    scheduler = start_scheduler(2, model=old)
    options = Batching(max_batch_size=8, batch_timeout_micros=50_000)
    old_queue, new_queue = scheduler.add_queue(options, old, "old"), scheduler.add_queue(options, new, "new")
    old.gate.clear()  # the old version's batch runs on and on
    running = submit(old_queue, block(0, 1))
    assert old.entered.wait(WAIT)
    closing = threading.Thread(target=old_queue.close, kwargs={"timeout": WAIT})
    closing.start()  # waits on the scheduler's condition, as unloading does
    time.sleep(0.2)
    fresh = submit(new_queue, block(1, 1))
    # The idle thread must take the new batch after its 50 ms, not when the old batch ends.
    np.testing.assert_array_equal(fresh.result(timeout=WAIT / 2)["y"], block(1, 1) * 2)
    assert not running.done()
    old.gate.set()
    closing.join(WAIT)
    np.testing.assert_array_equal(answer(running), block(0, 1) * 2)


def test_stop_runs_what_is_queued_and_ends_the_threads(start_scheduler):
    before = set(threading.enumerate())
    scheduler = start_scheduler(3)
    threads = set(threading.enumerate()) - before
    model = Model()
    queue = scheduler.add_queue(Batching(max_batch_size=8, batch_timeout_micros=600_000_000), model, "q")
    waiting = submit(queue, block(0, 2))
    scheduler.stop()
    assert len(threads) == 3 and not any(t.is_alive() for t in threads)
    np.testing.assert_array_equal(answer(waiting), block(0, 2) * 2)
    with pytest.raises(ServingError) as error:
        submit(queue, block(2, 1))
    assert error.value.code == "UNAVAILABLE"


def test_a_split_request_cancelled_while_queued_is_not_run(make_queue):
    queue, model, _ = make_queue(max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=2)
    model.gate.clear()
    first = submit(queue, block(0, 2))
    assert model.entered.wait(WAIT)
    split = submit(queue, block(2, 6))
    assert split.cancel()
    model.gate.set()
    answer(first)
    queue.close(timeout=WAIT)
    assert model.sizes == [2]


def test_requests_rerun_after_a_failed_batch_are_still_padded(make_queue):
    queue, model, _ = make_queue(max_batch_size=4, allowed_batch_sizes=(2, 4), batch_timeout_micros=300_000)
    futures = [submit(queue, x) for x in (block(0, 1), -block(1, 1), block(2, 1))]
    np.testing.assert_array_equal(answer(futures[0]), block(0, 1) * 2)
    assert set(model.sizes) <= {2, 4}


# ---------------------------------------------------------------------------- metrics


def page_lines(metrics: Metrics) -> list[str]:
    page = metrics.render()
    assert page.endswith("\n") and not page.endswith("\n\n")
    return page[:-1].split("\n")


def samples(lines: list[str], prefix: str) -> list[str]:
    return [line for line in lines if line.startswith(prefix) and not line.startswith("#")]


def test_metrics_page_uses_tf_servings_exposition_format():
    metrics = Metrics()
    metrics.request("resnet18", "OK", "predict", "REST", 0.002)
    metrics.request("resnet18", "NOT_FOUND", "Predict", "GRPC", 0.001)
    lines = page_lines(metrics)
    assert "# TYPE :tensorflow:serving:request_count counter" in lines
    assert "# TYPE :tensorflow:serving:request_latency histogram" in lines
    assert ':tensorflow:serving:request_count{model_name="resnet18",status="OK"} 1' in lines
    assert ':tensorflow:serving:request_count{model_name="resnet18",status="NOT_FOUND"} 1' in lines
    assert not any(line.startswith("# HELP") for line in lines)
    assert not any("_total" in line.split("{")[0] for line in lines)
    types = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert types == sorted(types)  # TF metric names in order; ':' sorts as '/' would here
    # a metric nobody recorded still has its TYPE line
    assert "# TYPE :tensorflow:serving:model_warmup_latency histogram" in lines


def test_metrics_without_labels_are_written_with_empty_braces():
    metrics = Metrics()
    metrics.batch(input_size=3, padded_size=4, queuing_seconds=[0.0001, 0.0002, 0.0003])
    lines = page_lines(metrics)
    assert ":tensorflow:serving:batching_session:wrapped_run_count{} 1" in lines
    assert ":tensorflow:serving:batching_session:input_batch_size_sum{} 3" in lines
    assert ":tensorflow:serving:batching_session:input_batch_size_count{} 1" in lines
    assert ':tensorflow:serving:batching_session:padding_size_count{execution_batch_size="4"} 1' in lines
    assert (
        ':tensorflow:serving:batching_session:queuing_latency_count{thread_pool_name="model_server_batch_threads"} 3'
        in lines
    )


def test_histogram_buckets_are_cumulative_and_end_with_inf():
    metrics = Metrics()
    for size in (1, 3, 3, 100):
        metrics.batch(input_size=size, padded_size=size, queuing_seconds=[])
    lines = page_lines(metrics)
    name = ":tensorflow:serving:batching_session:input_batch_size"
    buckets = samples(lines, f"{name}_bucket")
    limits = [line.split('le="')[1].split('"')[0] for line in buckets]
    counts = [int(line.rsplit(" ", 1)[1]) for line in buckets]
    assert limits == [*(str(2**i) for i in range(14)), "+Inf"]  # Exponential(1, 2, 14)
    assert counts == sorted(counts) and counts[-1] == 4
    # TF counts a value in the first bucket whose limit is above it (v < limit)
    assert dict(zip(limits, counts, strict=True))["1"] == 0
    assert dict(zip(limits, counts, strict=True))["2"] == 1
    assert dict(zip(limits, counts, strict=True))["4"] == 3
    assert dict(zip(limits, counts, strict=True))["128"] == 4
    index = lines.index(buckets[-1])
    assert lines[index + 1 : index + 3] == [f"{name}_sum{{}} 107", f"{name}_count{{}} 4"]


def test_latency_buckets_are_tf_servings_and_labelled():
    metrics = Metrics()
    metrics.request("m", "OK", "predict", "REST", 0.000_015)  # 15 µs
    buckets = samples(page_lines(metrics), ":tensorflow:serving:request_latency_bucket")
    assert len(buckets) == 34  # Exponential(10, 1.8, 33) + DBL_MAX
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="m",API="predict",entrypoint="REST",'
    assert buckets[:3] == [f'{prefix}le="10"}} 0', f'{prefix}le="18"}} 1', f'{prefix}le="32.4"}} 1']
    assert buckets[-1] == f'{prefix}le="+Inf"}} 1'


def test_request_latency_is_recorded_only_for_ok():
    metrics = Metrics()
    for status in ("NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE"):
        metrics.request("m", status, "predict", "REST", 0.01)
    lines = page_lines(metrics)
    assert samples(lines, ":tensorflow:serving:request_latency") == []
    assert len(samples(lines, ":tensorflow:serving:request_count")) == 3
    metrics.request("m", "OK", "predict", "REST", 0.01)
    assert ':tensorflow:serving:request_latency_count{model_name="m",API="predict",entrypoint="REST"} 1' in (
        page_lines(metrics)
    )


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.request('a"b\\c', "OK", "predict", "REST", 0.001)
    assert ':tensorflow:serving:request_count{model_name="a\\"b\\\\c",status="OK"} 1' in page_lines(metrics)


# ---------------------------------------------------------------------------- JSON tensors

X = TensorSpec("x", "x:0", tf.float32, (-1, 2))
S = TensorSpec("s", "s:0", tf.string, (-1,))
N = TensorSpec("n", "n:0", tf.int32, (-1,))
Y = TensorSpec("y", "y:0", tf.float32, (-1,))
TWO_INPUTS = Signature("serving_default", "tensorflow/serving/predict", {"s": S, "x": X}, {"y": Y})
ONE_INPUT = Signature("serving_default", "tensorflow/serving/predict", {"x": X}, {"y": Y})
INT_INPUT = Signature("serving_default", "tensorflow/serving/predict", {"n": N}, {"y": Y})


def refused(doc: dict, signature: Signature) -> str:
    with pytest.raises(ServingError) as error:
        inputs_from_json(doc, signature)
    assert error.value.code == "INVALID_ARGUMENT"
    return error.value.message


def test_decode_json_accepts_nan_and_infinity():
    doc = decode_json(b'{"instances": [[NaN, Infinity], [-Infinity, 1]]}')
    values = doc["instances"]
    assert math.isnan(values[0][0]) and values[0][1] == math.inf and values[1] == [-math.inf, 1]


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_decode_json_of_an_empty_body(body):
    with pytest.raises(ServingError) as error:
        decode_json(body)
    assert (error.value.code, error.value.message) == ("INVALID_ARGUMENT", "JSON Parse error: The document is empty.")


def test_decode_json_of_malformed_json_names_the_offset():
    with pytest.raises(ServingError) as error:
        decode_json(b"instances = [1, 2]")
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message.startswith("JSON Parse error: ") and error.value.message.endswith(" at offset: 0")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"3"])
def test_decode_json_of_a_non_object(body):
    with pytest.raises(ServingError) as error:
        decode_json(body)
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.message.startswith("JSON Value: ") and error.value.message.endswith(" Is not object")


def test_row_format_for_one_input():
    tensors, columnar = inputs_from_json({"instances": [[1, 2], [3.5, 4]]}, ONE_INPUT)
    assert not columnar
    assert tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"], [[1, 2], [3.5, 4]])


def test_named_row_format_for_two_inputs_decodes_b64():
    doc = {
        "instances": [
            {"x": [1, 2], "s": "text"},
            {"x": [3, 4], "s": {"b64": base64.b64encode(b"\x00\xffbytes").decode()}},
        ]
    }
    tensors, columnar = inputs_from_json(doc, TWO_INPUTS)
    assert not columnar
    assert (tensors["x"].shape, tensors["x"].dtype) == ((2, 2), np.float32)
    assert tensors["s"].shape == (2,) and tensors["s"].tolist() == [b"text", b"\x00\xffbytes"]


def test_columnar_format_for_one_and_for_two_inputs():
    tensors, columnar = inputs_from_json({"inputs": [[1, 2]]}, ONE_INPUT)
    assert columnar and tensors["x"].shape == (1, 2) and tensors["x"].dtype == np.float32
    doc = {"inputs": {"x": [[1, 2], [3, 4], [5, 6]], "s": ["a", "b", {"b64": "Yw=="}], "ignored": 1}}
    tensors, columnar = inputs_from_json(doc, TWO_INPUTS)
    assert columnar and set(tensors) == {"x", "s"}
    assert tensors["x"].shape == (3, 2) and tensors["s"].tolist() == [b"a", b"b", b"c"]


def test_ragged_rows_are_refused():
    message = refused({"instances": [[1, 2], [3]]}, ONE_INPUT)
    assert message == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1"
    )
    message = refused({"inputs": [[1, 2], [3]]}, ONE_INPUT)
    assert message == "Encountered list at unexpected size: 1 at level: 1 expected size: 2"


def test_a_string_for_a_float_is_refused():
    message = refused({"instances": [["a", 1]]}, ONE_INPUT)
    assert message.startswith(
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "a" Type: String is not of expected type: float'
    )


def test_a_bool_for_a_float_is_refused():
    message = refused({"instances": [[True, False]]}, ONE_INPUT)
    assert "JSON Value: true Type: True is not of expected type: float" in message


def test_an_int_outside_int32_is_refused():
    message = refused({"instances": [1, 2_147_483_648]}, INT_INPUT)
    assert "JSON Value: 2147483648 Type: Number is not of expected type: int32" in message
    message = refused({"inputs": [-2_147_483_649]}, INT_INPUT)
    assert "JSON Value: -2147483649 Type: Number is not of expected type: int32" in message
    tensors, _ = inputs_from_json({"instances": [2_147_483_647, -2_147_483_648]}, INT_INPUT)
    assert tensors["n"].dtype == np.int32


def test_an_unknown_named_input_is_refused():
    message = refused({"instances": [{"x": [1, 2], "s": "a", "z": 1}]}, TWO_INPUTS)
    assert message == (
        "Failed to process element: 0 key: z of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: z"
    )


def test_a_missing_named_input_in_row_format_is_refused():
    message = refused({"instances": [{"x": [1, 2], "s": "a"}, {"x": [3, 4]}]}, TWO_INPUTS)
    assert message.startswith("Failed to process element: 1 of 'instances' list. JSON object: ")
    assert message.endswith(" keys must be equal to: s,x")
    assert refused({"instances": [[1, 2]]}, TWO_INPUTS) == (
        "instances is a plain list, but expecting list of objects as multiple input tensors required "
        "as per tensorinfo_map"
    )


def test_a_missing_named_input_in_columnar_format_is_refused():
    assert refused({"inputs": {"x": [[1, 2]]}}, TWO_INPUTS) == "Missing named input: s in 'inputs' object."


def test_type_errors_name_tf_servings_dtype():
    message = refused({"instances": [["a", 1]]}, ONE_INPUT)
    assert message == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "a" Type: String is not of expected type: float'
    )


@pytest.mark.parametrize(
    ("doc", "signature"),
    [({"instances": [[1.5, True]]}, ONE_INPUT), ({"instances": [1, True]}, INT_INPUT)],
    ids=["float", "int32"],
)
def test_a_bool_among_numbers_is_refused(doc, signature):
    assert "Type: True is not of expected type" in refused(doc, signature)


def test_decode_json_accepts_inf():
    assert decode_json(b'{"instances": [Inf, -Inf]}')["instances"] == [math.inf, -math.inf]


def test_predict_response_row_format_one_output_is_a_bare_list():
    body = predict_response({"y": np.array([[1, 2], [3, 4]], np.float32)}, columnar=False)
    assert json.loads(body) == {"predictions": [[1.0, 2.0], [3.0, 4.0]]}


def test_predict_response_row_format_several_outputs_are_objects_per_row():
    outputs = {"a": np.array([[1, 2], [3, 4]], np.int64), "b": np.array([0.5, 1.5], np.float32)}
    body = predict_response(outputs, columnar=False)
    assert json.loads(body) == {"predictions": [{"a": [1, 2], "b": 0.5}, {"a": [3, 4], "b": 1.5}]}


def test_predict_response_columnar_one_and_several_outputs():
    one = predict_response({"y": np.array([[1, 2]], np.float32)}, columnar=True)
    assert json.loads(one) == {"outputs": [[1.0, 2.0]]}
    several = predict_response({"a": np.array([1, 2], np.int32), "b": np.array([True, False])}, columnar=True)
    assert json.loads(several) == {"outputs": {"a": [1, 2], "b": [True, False]}}


@pytest.mark.parametrize("columnar", [False, True], ids=["rows", "columnar"])
def test_predict_response_writes_bare_nan_and_infinity(columnar):
    body = predict_response({"y": np.array([[np.nan, np.inf], [-np.inf, 1]], np.float32)}, columnar=columnar)
    assert b"NaN" in body and b"-Infinity" in body and b"null" not in body
    values = json.loads(body)["outputs" if columnar else "predictions"]
    assert math.isnan(values[0][0]) and values[0][1] == math.inf and values[1] == [-math.inf, 1.0]


def test_predict_response_strings_are_text_or_b64_for_bytes_outputs():
    words = np.array([b"cat", "čaj".encode()], dtype=object)
    raw = np.array([b"\x89PNG\x00", b"\xff"], dtype=object)
    body = predict_response({"classes": words, "image_bytes": raw}, columnar=False)
    assert json.loads(body) == {
        "predictions": [
            {"classes": "cat", "image_bytes": {"b64": base64.b64encode(b"\x89PNG\x00").decode()}},
            {"classes": "čaj", "image_bytes": {"b64": "/w=="}},
        ]
    }


# ---------------------------------------------------------------------------- platform and session config

PLATFORM = """platform_configs {{
  key: "tensorflow"
  value {{
    source_adapter_config {{
      [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {{
        legacy_config {{
{body}
        }}
      }}
    }}
  }}
}}
"""


@pytest.fixture(autouse=True)
def _onednn_on(monkeypatch):
    # pt2tf-client's main() sets TF_ENABLE_ONEDNN_OPTS=0 for its own process; client tests that call it
    # in this process leave it in os.environ, and bf16 is refused without oneDNN.
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)


def _platform(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "platform.config"
    path.write_text(PLATFORM.format(body=body))
    return path


def test_a_platform_config_sets_session_config_batching_tags_and_warmup(tmp_path):
    path = _platform(
        tmp_path,
        """          session_config { intra_op_parallelism_threads: 3 inter_op_parallelism_threads: 1
            graph_options { rewrite_options { remapping: OFF } } }
          batching_parameters { max_batch_size { value: 16 } num_batch_threads { value: 1 } }
          saved_model_tags: "serve"
          enable_model_warmup: true
          model_warmup_options { num_request_iterations { value: 3 } }""",
    )
    settings = load_platform_config(path, num_cores=2)
    assert settings.session_config.intra_op_parallelism_threads == 3
    assert settings.session_config.inter_op_parallelism_threads == 1
    assert settings.session_config.graph_options.rewrite_options.remapping == 2  # RewriterConfig.OFF
    assert (settings.batching.max_batch_size, settings.batching.num_batch_threads) == (16, 1)
    assert settings.saved_model_tags == ("serve",)
    assert (settings.enable_model_warmup, settings.warmup_iterations) == (True, 3)
    assert not settings.bf16


def test_without_batching_parameters_a_platform_config_serves_unbatched_and_without_warmup(tmp_path):
    settings = load_platform_config(_platform(tmp_path, "          session_config { }"), num_cores=2)
    assert settings.batching is None and settings.enable_model_warmup is False  # TF Serving's defaults


@pytest.mark.parametrize(
    ("body", "line", "named"),
    [
        ("          session_config { intra_op_threads: 2 }", 7, "intra_op_threads"),
        ("          batching_parameters { max_batch_size: 16 }", 7, "max_batch_size"),
        ("          mixed_precision: bfloat16", 7, "mixed_precision"),
    ],
    ids=["unknown-field", "wrapper-without-value", "unquoted-string"],
)
def test_a_bad_field_in_a_platform_config_names_file_line_and_field(tmp_path, body, line, named):
    path = _platform(tmp_path, body)
    with pytest.raises(ConfigError, match=rf"^{path}:{line}:\d+: invalid platform config file .*{named}"):
        load_platform_config(path, num_cores=2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('platform_configs { key: "tflite" value { } }', r'no platform_configs entry with key "tensorflow"'),
        (
            'platform_configs { key: "tensorflow" value { source_adapter_config {\n'
            "  [type.googleapis.com/tensorflow.serving.SessionBundleConfig] { enable_model_warmup: true } } } }",
            r":1: source_adapter_config holds 'type.googleapis.com/tensorflow.serving.SessionBundleConfig'",
        ),
        (PLATFORM.format(body='          session_target: "grpc://x"'), r":7: SessionBundleConfig.session_target is"),
        (PLATFORM.format(body='          mixed_precision: "float16"'), r"mixed_precision 'float16' is not supported"),
    ],
    ids=["no-tensorflow-platform", "wrong-adapter", "unsupported-field", "unknown-mixed-precision"],
)
def test_a_platform_config_pt2tf_serve_cannot_honour_is_refused(tmp_path, text, expected):
    path = tmp_path / "platform.config"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_platform_config(path, num_cores=2)


RECORDED_CPUS = Path(__file__).resolve().parents[1] / "data" / "cpuinfo"
# Each recorded CPU kind: whether it computes bf16 natively, and its kind (tests/data/cpuinfo/README.md).
CPU_KINDS = {
    "amd-epyc-avx2.txt": (False, "AVX2 only"),
    "amd-epyc-avx512-bf16.txt": (True, "AVX-512 + avx512_bf16"),
    "intel-xeon-spr-amx.txt": (True, "AVX-512 + AMX"),
}


def _expect_platform_config(name: str, refusal: str | None) -> None:
    """What the repository's platform config must give on the CPU cpu_info() reads: bf16 only where it is native
    (and oneDNN on); `refusal` is the bf16 refusal expected here (the bf16_refusal_expected fixture's)."""
    path = DOCKER_CONFIG / name
    if name == "platform-bf16.config" and refusal:
        with pytest.raises(ConfigError, match=refusal):
            load_platform_config(path, num_cores=2)
        return
    settings = load_platform_config(path, num_cores=2)
    assert settings.batching == load_batching(DOCKER_CONFIG / "batching.config", 2)
    config = settings.session_config
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (2, 2)
    assert settings.bf16 == (name == "platform-bf16.config")


@pytest.mark.parametrize("name", ["platform.config", "platform-bf16.config"])
def test_the_repositorys_platform_configs_parse_and_match_server_flags(name, bf16_refusal_expected):
    # This machine's CPU decides the bf16 branch, read as the server reads it (and this environment's oneDNN switch).
    _expect_platform_config(name, bf16_refusal_expected())


@pytest.mark.parametrize("kind", sorted(CPU_KINDS))
@pytest.mark.parametrize("name", ["platform.config", "platform-bf16.config"])
def test_the_platform_configs_on_every_recorded_cpu_kind(name, kind, monkeypatch, bf16_refusal_expected):
    # The same check with each recorded CPU kind in place of this machine's: both branches run on any machine.
    monkeypatch.setenv(CPUINFO_ENV, str(RECORDED_CPUS / kind))
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert (cpu_info().bf16, cpu_info().kind) == CPU_KINDS[kind]
    _expect_platform_config(name, bf16_refusal_expected())


def test_the_platform_config_reaches_every_versions_session(tmp_path):
    from pt2tf_serve.servable import Servable
    from pt2tf_serve.server import ModelServer

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2.0}

    module = Tiny()
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": module.serve})
    path = _platform(tmp_path, "          session_config { intra_op_parallelism_threads: 1 }")
    server = ModelServer(parse_flags([f"--model_base_path={tmp_path / 'm'}", f"--platform_config_file={path}"]))
    assert server.core._session_config.intra_op_parallelism_threads == 1
    servable = Servable("m", 1, tmp_path / "m" / "1", server.core._session_config, ["serve"])
    try:
        assert servable.session._config == server.settings.session_config
        signature = servable.signatures["serving_default"]
        assert servable.run(signature, {"x": np.array([1.5], np.float32)}, ("y",))["y"].tolist() == [3.0]
    finally:
        servable.close()


def test_without_a_platform_config_the_flags_and_session_config_file_make_the_session(tmp_path):
    from pt2tf_serve.server import session_settings

    session_file = tmp_path / "session.config"
    session_file.write_text("intra_op_parallelism_threads: 5\nallow_soft_placement: true\n")
    options = parse_flags(
        [*BASE, f"--tensorflow_session_config_file={session_file}", "--tensorflow_inter_op_parallelism=1"]
    )
    config = session_settings(options).session_config
    # As TF Serving: a thread flag set overrides both pools of the file (0 lets TensorFlow choose).
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (0, 1)
    assert config.allow_soft_placement


def test_mixed_precision_bfloat16_is_the_onednn_rewrite_option_and_other_modes_are_refused(bf16_refusal_expected):
    from pt2tf_serve.server import session_settings

    bf16_flags = parse_flags([*BASE, "--mixed_precision=bfloat16"])
    if refusal := bf16_refusal_expected():  # on a CPU without bf16 (or with oneDNN off) the flag is refused, saying why
        with pytest.raises(ConfigError, match=refusal):
            session_settings(bf16_flags)
    else:
        assert session_settings(bf16_flags).bf16
    with pytest.raises(ConfigError, match="mixed_precision 'fp16' is not supported"):
        session_settings(parse_flags([*BASE, "--mixed_precision=fp16"]))


def test_bf16_is_refused_with_a_clear_message_on_a_cpu_without_bf16(tmp_path):
    # A CPU without bf16 cannot be had on this machine: its /proc/cpuinfo is written here instead.
    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: Old Xeon\nflags\t\t: fpu sse2 avx2 avx512f\n")
    old = cpu_info(fake)
    assert not old.bf16 and old.relevant_flags == ["avx2", "avx512f"]
    refusal = bf16_refusal(old)
    assert "avx512_bf16 or amx_bf16" in refusal and "Old Xeon" in refusal and "fp32" in refusal
    new = tmp_path / "cpuinfo-amx"
    new.write_text("model name\t: Xeon SPR\nflags\t\t: avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert bf16_refusal(cpu_info(new)) is None


def test_bf16_is_refused_when_onednn_is_off(tmp_path, monkeypatch):
    # Without oneDNN, Grappler skips the bf16 rewrite and the server would run fp32 while claiming bf16. On a CPU
    # with bf16 (recorded, so that this runs on any machine) the variable is what is named.
    monkeypatch.setenv(CPUINFO_ENV, str(RECORDED_CPUS / "intel-xeon-spr-amx.txt"))
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    with pytest.raises(ConfigError, match="TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off"):
        load_platform_config(DOCKER_CONFIG / "platform-bf16.config", num_cores=2)
    load_platform_config(DOCKER_CONFIG / "platform.config", num_cores=2)  # fp32 needs no oneDNN
    # On a CPU without bf16 the CPU is named first: unsetting the variable would not make bf16 run there.
    monkeypatch.setenv(CPUINFO_ENV, str(RECORDED_CPUS / "amd-epyc-avx2.txt"))
    with pytest.raises(ConfigError, match=r"avx512_bf16 or amx_bf16 .*\(AMD EPYC\) has neither"):
        load_platform_config(DOCKER_CONFIG / "platform-bf16.config", num_cores=2)


def test_platform_config_map_is_tf_servings_message():
    assert PlatformConfigMap.DESCRIPTOR.full_name == "tensorflow.serving.PlatformConfigMap"
    adapter = SavedModelBundleSourceAdapterConfig.DESCRIPTOR
    assert adapter.fields_by_name["legacy_config"].number == 1000
    bundle = adapter.fields_by_name["legacy_config"].message_type
    numbers = {f.name: f.number for f in bundle.fields}
    assert numbers["session_config"] == 2 and numbers["batching_parameters"] == 3
    assert numbers["enable_model_warmup"] == 779 and numbers["mixed_precision"] == 791
    assert bundle.fields_by_name["session_config"].message_type.full_name == "tensorflow.ConfigProto"
