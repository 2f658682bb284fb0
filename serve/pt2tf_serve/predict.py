"""The one predict path REST and gRPC both call: check inputs against the signature, batch or run, time it.

Checks and messages follow TF Serving's predict_util.cc and batching_session.cc.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
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


# gRPC's deadlines reach TF Serving as RunOptions.timeout_in_ms, an int32 that gpr_time_to_millis
# clamps (prediction_service_util.cc): a deadline further away than this is no deadline at all.
MAX_TIMEOUT_SECONDS = (2**31 - 1) / 1000


def effective_timeout(seconds: float | None) -> float | None:
    """A caller's remaining time as the wait uses it: None for no deadline or one beyond int32 milliseconds."""
    if seconds is None or seconds >= MAX_TIMEOUT_SECONDS:
        return None
    return seconds


class Predictor:
    """Runs predictions on held versions, through the version's batch queue when batching is on.

    Callers await on the event loop: a waiting request holds no thread, so a flood of callers
    is refused at enqueue time instead of queueing for a thread first. Without batching, the
    Session runs on `session_threads` threads, as many as TF Serving's request threads would.
    """

    def __init__(self, core: ServerCore, metrics: Metrics, session_threads: int):
        self.core = core
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=session_threads, thread_name_prefix="session")

    async def run(
        self,
        version: Version,
        signature: Signature,
        inputs: dict[str, np.ndarray],
        output_filter: list[str],
        timeout: float | None,
    ) -> Prediction:
        """Run one request on a held version; `timeout` in seconds (None: none) bounds the wait.

        A request still queued when its time runs out, or whose caller is gone (the awaiting task
        is cancelled), leaves the queue and is never run.
        """
        size = check_inputs(signature, inputs)
        outputs = check_output_filter(signature, output_filter)
        timeout = effective_timeout(timeout)
        if timeout is not None and timeout <= 0:
            # TF Serving would pass a non-positive timeout_in_ms, which the batching session reads as
            # "none", and run it for a caller whose gRPC library has already answered DEADLINE_EXCEEDED.
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded")
        started = time.monotonic()
        queue = self.core.queue(version, signature)
        future = None
        if queue is not None:
            with contextlib.suppress(QueueClosed):  # the version began unloading: it is held, so run it here
                future = queue.submit(inputs, size)
        batched = future is not None
        if not batched:
            future = self.pool.submit(version.servable.run, signature, inputs, outputs)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            # Still queued: it leaves the queue and will not run. Without batching, TF Serving's
            # Session::Run itself times out, whether or not it had started.
            if future.cancel() and batched:
                raise ServingError(
                    "RESOURCE_EXHAUSTED", "Run() timeout exceeded while waiting in batching queue"
                ) from None
            raise ServingError("DEADLINE_EXCEEDED", "Timed out waiting for notification") from None
        except asyncio.CancelledError:
            future.cancel()  # the caller left: its place in the queue goes to the next one
            raise
        self.metrics.runtime_latency(version.servable.name, "Predict", time.monotonic() - started)
        return Prediction(version.servable.name, version.number, signature.name, {k: result[k] for k in outputs})

    def close(self) -> None:
        self.pool.shutdown(wait=True)


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
