"""The one predict path REST and gRPC both call: check inputs against the signature, batch or run, time it.

Checks and messages follow TF Serving's predict_util.cc and batching_session.cc.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from .batching import QueueClosed
from .core import ServerCore, Version
from .metrics import Metrics
from .servable import Servable, Signature, type_name
from .status import ServingError


@dataclass(frozen=True)
class Prediction:
    model: str
    version: int
    signature: str
    outputs: dict[str, np.ndarray]


def find_signature(servable: Servable, name: str, rest: bool) -> Signature:
    """The named signature of a loaded version (REST and gRPC word the miss differently, as TF Serving does)."""
    name = name or "serving_default"
    signature = servable.signatures.get(name)
    if signature is None:
        if rest:
            raise ServingError("INVALID_ARGUMENT", f'Serving signature name: "{name}" not found in signature def')
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
    return signature


def _braces(names) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def check_inputs(signature: Signature, inputs: dict[str, np.ndarray]) -> int:
    """Refuse inputs the signature does not take; returns the batch size (dim 0) of a batchable request."""
    sent, wanted = set(inputs), set(signature.inputs)
    if len(sent) != len(wanted):
        raise ServingError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(sent)}!={len(wanted)} len({_braces(sent)}) != "
            f"len({_braces(wanted)}). Sent extra: {_braces(sent - wanted)}. "
            f"Missing but required: {_braces(wanted - sent)}.",
        )
    if sent != wanted:
        alias = sorted(wanted - sent)[0]
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Signature input alias: {alias}(feed name: {signature.inputs[alias].tensor}) not found in request and "
            f"no default value provided. Inputs expected to be in the request {_braces(sent)}, or default input "
            "alias set: ",
        )
    for index, (key, spec) in enumerate(signature.inputs.items()):
        array = inputs[key]
        if array.dtype != spec.numpy_dtype and not (spec.numpy_dtype.kind == "O" and array.dtype.kind in "OS"):
            got = "string" if array.dtype.kind in "OSU" else type_name(array.dtype.name)
            raise ServingError("INVALID_ARGUMENT", f"Expects arg[{index}] to be {spec.type_name} but {got} is provided")
        if not spec.accepts_shape(array.shape):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input '{key}' of signature '{signature.name}' has shape [{','.join(map(str, array.shape))}], "
                f"the signature takes {spec.describe()}",
            )
    sizes = {array.shape[0] for array in inputs.values() if array.ndim}
    if len(sizes) > 1:
        raise ServingError("INVALID_ARGUMENT", "Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop() if sizes else 0


def check_output_filter(signature: Signature, output_filter: list[str]) -> tuple[str, ...]:
    """The outputs to fetch: the filter's, checked, or every output of the signature."""
    if not output_filter:
        return tuple(signature.outputs)
    seen = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{_braces(signature.outputs)}.",
            )
        if alias in seen:
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return tuple(output_filter)


class Predictor:
    """Runs predictions on held versions, through the version's batch queue when batching is on."""

    def __init__(self, core: ServerCore, metrics: Metrics):
        self.core = core
        self.metrics = metrics

    def run(
        self,
        version: Version,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        output_filter: list[str],
        timeout: float | None,
    ) -> Prediction:
        """Run one request on a held version; `timeout` in seconds bounds the wait (DEADLINE_EXCEEDED)."""
        size = check_inputs(signature, inputs)
        outputs = check_output_filter(signature, output_filter)
        started = time.monotonic()
        queue = self.core.queue(version, signature)
        future = None
        if queue is not None:
            with contextlib.suppress(QueueClosed):  # the version began unloading: it is held, so run it here
                future = queue.submit(inputs, size)
        if future is None:
            result = version.servable.run(signature, inputs, outputs)
        else:
            try:
                batched = future.result(timeout=timeout)
            except FutureTimeout:
                if future.cancel():  # still queued: it will not run
                    raise ServingError(
                        "RESOURCE_EXHAUSTED", "Run() timeout exceeded while waiting in batching queue"
                    ) from None
                raise ServingError("DEADLINE_EXCEEDED", "Timed out waiting for notification") from None
            result = {name: batched[name] for name in outputs}
        self.metrics.runtime_latency(version.servable.name, "Predict", time.monotonic() - started)
        return Prediction(version.servable.name, version.number, signature.name, result)


def _signature_text(signature_def) -> str:
    return str(signature_def)  # protobuf text format, as TF Serving's SignatureDef.DebugString()


def check_example_signature(version: Version, name: str, method: str) -> None:
    """Classify/Regress on a signature: TF Serving's structural checks and their messages.

    The project's models have only predict signatures, so these checks decide every such call.
    A signature that passes them would need tf.Example parsing, which the embedded server does
    not implement: it answers UNIMPLEMENTED rather than guessing.
    """
    name = name or "serving_default"
    signature_def = version.servable.signature_defs.get(name)
    if signature_def is None or name.startswith("__"):
        raise ServingError("INVALID_ARGUMENT", f"No signature was found with the name: {name}")
    inputs, outputs = signature_def.inputs, signature_def.outputs
    if len(inputs) != 1:
        raise ServingError("INVALID_ARGUMENT", "Expected one input Tensor.")
    if method == "classify":
        if len(outputs) not in (1, 2):
            raise ServingError("INVALID_ARGUMENT", f"Expected one or two output Tensors, found {len(outputs)}")
        if "inputs" not in inputs:
            raise ServingError(
                "INVALID_ARGUMENT", f"No classification inputs found in SignatureDef: {_signature_text(signature_def)}"
            )
        if "classes" not in outputs and "scores" not in outputs:
            raise ServingError(
                "INVALID_ARGUMENT",
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {_signature_text(signature_def)}",
            )
    else:
        if len(outputs) != 1:
            raise ServingError("INVALID_ARGUMENT", "Expected one output Tensor.")
        if "inputs" not in inputs:
            raise ServingError(
                "INVALID_ARGUMENT", f"No regression inputs found in SignatureDef: {_signature_text(signature_def)}"
            )
        if "outputs" not in outputs:
            raise ServingError(
                "INVALID_ARGUMENT", f"No regression outputs found in SignatureDef: {_signature_text(signature_def)}"
            )
    raise ServingError(
        "UNIMPLEMENTED",
        f"{method} on tf.Example inputs is not implemented by the embedded server (signature '{name}'); "
        "run the real tensorflow/serving image for classification and regression signatures",
    )
