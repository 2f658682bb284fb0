"""The load test's users for Locust's own command line, distributed mode included.

One machine, several processes (Locust's --processes forks workers that share the load):

    locust -f loadtest/locustfile.py --headless --processes 4 -u 64 -r 64 -t 2m \\
        --host http://SERVER:8501 --grpc-target SERVER:8500 --artifacts artifacts/onnx2tf \\
        GrpcTensorUser RestImageUser

Several machines: start `locust -f loadtest/locustfile.py --master ...` on one and
`locust -f loadtest/locustfile.py --worker --master-host MASTER` on each of the others, each
with the repository, its loadtest env and the export's artifacts/. The SLO gate and the report
come from `pt2tf-loadtest` (pt2tf_loadtest.runner), which drives the same users in one process.
"""

from __future__ import annotations

from pathlib import Path

from locust import events
from pt2tf_convert.repository import RepositoryError, served_model
from pt2tf_loadtest.inputs import load_inputs
from pt2tf_loadtest.users import TARGET, GrpcImageUser, GrpcTensorUser, RestImageUser, RestTensorUser

__all__ = ["GrpcImageUser", "GrpcTensorUser", "RestImageUser", "RestTensorUser"]


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--grpc-target", default="127.0.0.1:8500", help="TF Serving's gRPC HOST:PORT")
    parser.add_argument("--artifacts", default="artifacts/onnx2tf", help="the export's output: photos and answers")
    parser.add_argument("--model-name", help="the served model (default: the one --artifacts' export.json names)")
    parser.add_argument("--model-label", default=None, help="a version label to ask for (e.g. canary)")


@events.init.add_listener
def _target(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    TARGET.grpc = options.grpc_target
    TARGET.label = options.model_label
    try:
        TARGET.model = options.model_name or served_model(Path(options.artifacts), None)
        TARGET.inputs = load_inputs(Path(options.artifacts))
    except (FileNotFoundError, RepositoryError) as exc:
        # Locust only logs an exception raised here and runs its whole --run-time without inputs.
        raise SystemExit(f"locustfile: {exc}") from exc
