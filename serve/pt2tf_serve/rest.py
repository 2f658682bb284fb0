"""The REST door (TF Serving's http_rest_api_handler): its paths, JSON bodies, error bodies and HTTP codes.

Parsing and writing JSON run on a pool of `--rest_api_num_threads` threads; the event loop
moves bytes and awaits the prediction, so neither a slow or vanishing client nor a request
waiting for its batch holds a thread: callers beyond what the queue holds are refused at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

from aiohttp import web

from .batching import QUEUE_FULL
from .core import ServerCore, log
from .json_tensor import decode_json, error_body, inputs_from_json, predict_response, signature_name
from .metrics import Metrics
from .predict import Predictor, check_example_signature, find_signature
from .protocol import metadata_json, model_metadata, model_status, to_json
from .status import ServingError

PREDICTION_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?")
V1_PATH = re.compile(r"(?i)/v1/.*")
# libevent's own page for paths outside /v1, which TF Serving does not handle
NOT_FOUND_HTML = "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
# TF Serving sets no limit; this one keeps one request from taking the server's memory.
MAX_BODY_BYTES = 256 * 1024 * 1024
JSON_HEADERS = {"Content-Type": "application/json"}
INLINE_BODY_BYTES = 64 * 1024
LEADING_SIGNATURE_NAME = re.compile(rb'\s*\{\s*"signature_name"\s*:\s*"([A-Za-z0-9_./-]*)"\s*[,}]')


async def _inline(work: Callable, *args):
    return work(*args)


def _json(status: int, body: bytes | str) -> web.Response:
    return web.Response(status=status, body=body if isinstance(body, bytes) else body.encode(), headers=JSON_HEADERS)


def _error(error: ServingError) -> web.Response:
    return _json(error.http_status, error_body(error.message))


class RestApi:
    """aiohttp handlers onto the shared core and predict path."""

    def __init__(
        self,
        core: ServerCore,
        predictor: Predictor,
        metrics: Metrics,
        num_threads: int,
        timeout_ms: int,
        metrics_path: str | None,
    ):
        self.core = core
        self.predictor = predictor
        self.metrics = metrics
        # As http_rest_api_handler.cc, which sets RunOptions.timeout_in_ms only when the flag is positive.
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        self.metrics_path = metrics_path
        self.pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest")
        self.in_flight = 0
        self.stopping = False
        self._idle: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            response = await self._answer(request)
            # While draining, the listener is closed: a request can only come on a connection accepted
            # before the stop, whose client sent it in time. It is served, and its connection closed
            # after the answer, so a kept-alive client cannot keep the drain going.
            if self.stopping:
                response.force_close()
            return response
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except ServingError as error:
            return _error(error)
        except web.HTTPException:
            raise
        except Exception as exc:  # a bug must still answer in TF Serving's shape, and the server lives on
            log(f"internal error on {request.method} {request.path}: {type(exc).__name__}: {exc}")
            return _error(ServingError("INTERNAL", f"{type(exc).__name__}: {exc}"))

    async def drain(self, timeout: float) -> bool:
        """Close connections after their answers; wait up to `timeout` for requests in flight; True if none is left."""
        self.stopping = True
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if self.metrics_path is not None and path == self.metrics_path:
            return web.Response(text=self.metrics.render(), content_type="text/plain")
        if not V1_PATH.fullmatch(path):
            return web.Response(status=404, text=NOT_FOUND_HTML, content_type="text/html", charset="ISO-8859-1")
        if request.method == "OPTIONS":  # CORS preflight
            if re.match(r"https?://", request.headers.get("Origin", "")):
                return web.Response(status=200, headers=JSON_HEADERS)
            return _error(ServingError("INVALID_ARGUMENT", "Origin header is missing in CORS preflight"))
        match = PREDICTION_PATH.fullmatch(path)
        # The path regex ignores case, but TF Serving compares the method literally: `:PREDICT` is malformed.
        if request.method == "POST" and match and match.group(4) in ("predict", "classify", "regress"):
            return await self._inference(request, match)
        match = STATUS_PATH.fullmatch(path)
        if request.method == "GET" and match:
            return await self._status_or_metadata(match)
        return _error(ServingError("INVALID_ARGUMENT", f"Malformed request: {request.method} {path}"))

    def _spec(self, match: re.Match) -> tuple[str, int | None, str | None]:
        name, version, label = match.group(1), match.group(2), match.group(3)
        number = int(version) if version is not None else None
        if number is not None and number > 2**63 - 1:
            raise ServingError("INVALID_ARGUMENT", f"Failed to convert version: {version} to numeric.")
        return unquote(name) if name else name, number, unquote(label) if label else None

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise ServingError("RESOURCE_EXHAUSTED", self._too_large(request.content_length))
        try:
            return await asyncio.wait_for(request.read(), self.timeout)
        except web.HTTPRequestEntityTooLarge:
            raise ServingError("RESOURCE_EXHAUSTED", self._too_large(None)) from None
        except TimeoutError:
            raise ServingError(
                "DEADLINE_EXCEEDED",
                f"request body not received within --rest_api_timeout_in_ms={self.timeout * 1000:.0f}",
            ) from None

    @staticmethod
    def _too_large(size: int | None) -> str:
        got = f" of {size} bytes" if size is not None else ""
        return (
            f"request body{got} is larger than the embedded server's limit of {MAX_BODY_BYTES >> 20} MiB: "
            'send images as JPEG bytes ({"b64": ...}) or split the batch'
        )

    async def _inference(self, request: web.Request, match: re.Match) -> web.Response:
        started = time.monotonic()
        method = match.group(4)
        name = match.group(1) or ""
        try:
            name, version, label = self._spec(match)
            body = await self._read_body(request)
            if method == "predict":
                response = await self._predict(body, name, version, label)
            else:
                response = await self._in_pool(self._examples, body, name, version, label, method)
        except ServingError as error:
            self.metrics.request(name, error.code, method, "REST", time.monotonic() - started)
            return _error(error)
        self.metrics.request(name, "OK", method, "REST", time.monotonic() - started)
        return _json(200, response)

    async def _in_pool(self, work: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    def _refuse_if_full(self, body: bytes, name: str, version: int | None, label: str | None) -> None:
        """UNAVAILABLE before parsing a large body whose queue has no room at all.

        Parsing a few MB of JSON holds the GIL for tens of ms: done for every refused caller of a
        flood, it would delay every other answer, refusals included. The signature is read from the
        body only when it plainly has none (serving_default) or names it first; otherwise, or when
        the model does not resolve, the request takes the normal path and its checks.
        """
        if b'"signature_name"' not in body:
            key = "serving_default"
        elif match := LEADING_SIGNATURE_NAME.match(body):
            key = match.group(1).decode()
        else:
            return
        try:
            with self.core.hold(name, version, label) as held:
                signature = held.servable.signatures.get(key)
                queue = self.core.queue(held, signature) if signature is not None else None
        except ServingError:
            return
        if queue is not None and queue.full():
            raise ServingError("UNAVAILABLE", f"{QUEUE_FULL} (refused before its body was parsed)")

    async def _predict(self, body: bytes, name: str, version: int | None, label: str | None) -> bytes:
        # A small body (JPEGs as base64, a few rows) parses in less time than a hop to a thread and back,
        # which under a flood also waits behind every other request's hop.
        parse = _inline
        if len(body) > INLINE_BODY_BYTES:
            self._refuse_if_full(body, name, version, label)
            parse = self._in_pool
        # The order of checks is TF Serving's: the JSON, then the model, then the inputs against its signature.
        doc = await parse(decode_json, body)
        signature_key = signature_name(doc)
        with self.core.hold(name, version, label) as held:
            signature = find_signature(held.servable, signature_key, rest=True)
            if not signature.inputs:
                raise ServingError("INVALID_ARGUMENT", f"Failed to get input map for signature: {signature_key}")
            may_hold_bools = b"true" in body or b"false" in body
            inputs, columnar = await parse(inputs_from_json, doc, signature, may_hold_bools)
            prediction = await self.predictor.run(held, signature, inputs, [], self.timeout)
        return await parse(predict_response, prediction.outputs, columnar)

    def _examples(self, body: bytes, name: str, version: int | None, label: str | None, method: str) -> bytes:
        doc = decode_json(body)
        signature_key = signature_name(doc)
        with self.core.hold(name, version, label) as held:
            check_example_signature(held, signature_key, method)
        raise AssertionError("check_example_signature always raises")

    async def _status_or_metadata(self, match: re.Match) -> web.Response:
        try:
            name, version, label = self._spec(match)
            if not name:
                raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
            if match.group(4) == "metadata":
                with self.core.hold(name, version, label) as held:
                    return _json(200, metadata_json(model_metadata(held, ["signature_def"])))
            return _json(200, to_json(model_status(self.core.status(name, version))))
        except ServingError as error:
            return _error(error)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
