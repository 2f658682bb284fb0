"""TF Serving's JSON tensor encoding (util/json_tensor.cc): request bodies to arrays, arrays to responses.

The hot path never walks tensors element by element in Python: orjson parses the body, numpy
turns the nested lists into one array, and orjson writes numpy arrays directly. Only when that
fails (a string where a number belongs, ragged lists, a bool for a float, ...) does a slow walk
run, to name the offending value the way TF Serving does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import numpy as np
import orjson

from .servable import Signature, TensorSpec
from .status import ServingError

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def bad(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def debug_string(value: Any) -> str:
    """A JSON value as TF Serving quotes it in messages: one line, cut at 256 bytes."""
    try:
        text = orjson.dumps(value, option=_DUMPS_OPTIONS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) < 256 else text[:256]


def error_body(message: str) -> bytes:
    """TF Serving's error body: pretty-printed `{"error": message}`."""
    return b'{\n    "error": ' + orjson.dumps(message) + b"\n}"


# rapidjson's kParseNanAndInfFlag also reads Inf and -Inf; the standard library knows only Infinity.
_BARE_INF = re.compile(rb"(?<![\w\"])(-?)Inf(?![\w\"])")


def decode_json(body: bytes) -> dict:
    """The request body as a JSON object, read as TF Serving's parser reads it.

    NaN, Inf and Infinity are numbers, and text after the first complete value is ignored.
    orjson refuses both, so such bodies take the standard library's slower path.
    """
    if not body.strip():
        raise bad("JSON Parse error: The document is empty.")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            text = _BARE_INF.sub(rb"\1Infinity", body).decode()
            doc, _ = json.JSONDecoder().raw_decode(text.lstrip())
        except ValueError:
            raise bad(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    if not isinstance(doc, dict):
        raise bad(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "serving_default")
    if not isinstance(name, str):
        raise bad(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name or "serving_default"


# ---------------------------------------------------------------------------- JSON → tensors

_JSON_TYPE = {type(None): "Null", bool: "Bool", dict: "Object", list: "Array", str: "String", int: "Number"}


def _json_type(value: Any) -> str:
    if value is True:
        return "True"
    if value is False:
        return "False"
    return _JSON_TYPE.get(type(value), "Number")


def _type_error(value: Any, spec: TensorSpec) -> ServingError:
    return bad(f"JSON Value: {debug_string(value)} Type: {_json_type(value)} is not of expected type: {spec.type_name}")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _scalar_ok(value: Any, spec: TensorSpec) -> bool:
    kind = spec.numpy_dtype.kind
    if kind == "O":
        return isinstance(value, str) or (_is_b64(value) and isinstance(value["b64"], str))
    if kind == "b":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind in "iu":
        if not isinstance(value, int):
            return False
        info = np.iinfo(spec.numpy_dtype)
        return info.min <= value <= info.max
    return True


def _walk_problem(value: Any, spec: TensorSpec) -> ServingError:
    """The first problem in a JSON value that numpy could not turn into a tensor of `spec`'s dtype."""
    return _first_problem(value, spec) or bad(
        f"JSON Value: {debug_string(value)} cannot be converted to {spec.type_name}"
    )


def _first_problem(value: Any, spec: TensorSpec) -> ServingError | None:
    """The first value TF Serving would refuse in a JSON value for `spec`, walking it; None when all is well."""
    shape = _shape_of(value)

    def walk(v: Any, level: int) -> ServingError | None:
        if isinstance(v, list):
            if level >= len(shape):
                return bad(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
            if len(v) != shape[level]:
                return bad(
                    f"Encountered list at unexpected size: {len(v)} at level: {level} expected size: {shape[level]}"
                )
            for item in v:
                if (problem := walk(item, level + 1)) is not None:
                    return problem
            return None
        if level != len(shape):
            return bad(
                f"JSON Value: {debug_string(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        if spec.numpy_dtype.kind == "O" and isinstance(v, dict) and not _is_b64(v):
            return bad(f"JSON Value: {debug_string(v)} not formatted correctly for base64 data")
        return None if _scalar_ok(v, spec) else _type_error(v, spec)

    return walk(value, 0)


def _shape_of(value: Any) -> list[int]:
    """Dimensions found by following first elements, as TF Serving's GetDenseTensorShape does."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _decode_b64(value: dict) -> bytes:
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad("Unable to base64 decode") from None


def _strings(value: Any, spec: TensorSpec) -> np.ndarray:
    """A JSON value of strings and {"b64": ...} objects as an object array of bytes."""
    shape = _shape_of(value)
    flat: list[bytes] = []

    def walk(v: Any, level: int = 0) -> None:
        if isinstance(v, list):
            if level >= len(shape) or len(v) != shape[level]:  # ragged: TF Serving names where
                raise _walk_problem(value, spec)
            for item in v:
                walk(item, level + 1)
        elif level != len(shape):  # a value where a list belongs
            raise _walk_problem(value, spec)
        elif isinstance(v, str):
            flat.append(v.encode())
        elif _is_b64(v) and isinstance(v["b64"], str):
            flat.append(_decode_b64(v))
        else:
            raise _walk_problem(value, spec)

    walk(value)  # every list checked against `shape`, every value at its depth: `flat` fills it exactly
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def to_tensor(value: Any, spec: TensorSpec, may_hold_bools: bool = True) -> np.ndarray:
    """One input's JSON value as an array of the signature's dtype, or TF Serving's error for it.

    numpy reads `true` among numbers as 1; TF Serving refuses it. Unless the caller knows the body
    has no `true`/`false` token (`may_hold_bools=False`), numeric values are walked to check.
    """
    target = spec.numpy_dtype
    if target.kind == "O":
        return _strings(value, spec)
    if spec.dtype.name in ("float16", "bfloat16", "complex64", "complex128"):
        raise ServingError(
            "UNIMPLEMENTED", f"Conversion of JSON Value: {debug_string(value)} to type: {spec.type_name}"
        )
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nesting
        raise _walk_problem(value, spec) from None
    kind = array.dtype.kind
    compatible = (
        (target.kind == "f" and kind in "fiu")
        or (target.kind in "iu" and kind in "iu")
        or (target.kind == "b" and kind == "b")
    )
    if not compatible:
        raise _walk_problem(value, spec)
    if may_hold_bools and target.kind != "b" and (problem := _first_problem(value, spec)) is not None:
        raise problem
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise _walk_problem(value, spec)
    return array.astype(target, copy=False)


def _instance_error(index: int, problem: ServingError, key: str | None = None) -> ServingError:
    where = f"element: {index} key: {key}" if key else f"element: {index}"
    return ServingError(
        problem.code, f"Failed to process {where} of 'instances' list. Error: {problem.code}: {problem.message}"
    )


def _stack_instances(values: list[Any], spec: TensorSpec, key: str | None, may_hold_bools: bool) -> np.ndarray:
    try:
        return to_tensor(values, spec, may_hold_bools)
    except ServingError:
        pass
    # Find which instance is wrong, and how, as TF Serving reports it.
    first = None
    for index, value in enumerate(values):
        try:
            tensor = to_tensor(value, spec)
        except ServingError as problem:
            raise _instance_error(index, problem, key) from None
        if first is None:
            first = tensor.shape
        elif tensor.shape != first:
            size, got = int(np.prod(first)), tensor.size
            detail = (
                f"Expecting tensor size: {size} but got: {got}"
                if size != got
                else f"Expecting shape [{','.join(map(str, first))}] but got: [{','.join(map(str, tensor.shape))}]"
            )
            raise _instance_error(index, bad(detail), key) from None
    raise bad(f"JSON Value: {debug_string(values)} cannot be converted to {spec.type_name}")


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def inputs_from_json(
    doc: dict, signature: Signature, may_hold_bools: bool = True
) -> tuple[dict[str, np.ndarray], bool]:
    """The request's input tensors for `signature`, and whether it used the columnar (`inputs`) format.

    `may_hold_bools=False` (the body has no `true`/`false` token) skips the walk that finds booleans
    numpy would silently read as numbers.
    """
    if "instances" in doc and "inputs" in doc:
        raise bad(
            f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if "instances" in doc:
        return _from_instances(doc, signature, may_hold_bools), False
    if "inputs" in doc:
        return _from_inputs(doc["inputs"], signature, may_hold_bools), True
    raise bad("Missing 'inputs' or 'instances' key")


def _from_instances(doc: dict, signature: Signature, may_hold_bools: bool) -> dict[str, np.ndarray]:
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise bad(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
    if not instances:
        raise bad(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
    specs = signature.inputs
    if not _is_object(instances[0]):
        if len(specs) > 1:
            raise bad(
                "instances is a plain list, but expecting list of objects as multiple input tensors required "
                "as per tensorinfo_map"
            )
        for index, item in enumerate(instances):
            if _is_object(item):
                raise bad(f"Expecting value/list but got object at item {index} of input list")
        ((key, spec),) = specs.items()
        return {key: _stack_instances(instances, spec, None, may_hold_bools)}
    names = ",".join(sorted(specs))
    for index, item in enumerate(instances):
        if not _is_object(item):
            raise bad(f"Expecting object but got list at item {index} of input list")
        for key in item:
            if key not in specs:
                raise _instance_error(index, bad(f"JSON object: does not have named input: {key}"), key)
        if set(item) != set(specs):
            raise bad(
                f"Failed to process element: {index} of 'instances' list. JSON object: {debug_string(item)} "
                f"keys must be equal to: {names}"
            )
    return {
        key: _stack_instances([item[key] for item in instances], spec, key, may_hold_bools)
        for key, spec in specs.items()
    }


def _from_inputs(value: Any, signature: Signature, may_hold_bools: bool) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if not _is_object(value):
        if len(specs) > 1:
            raise bad(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        ((key, spec),) = specs.items()
        return {key: to_tensor(value, spec, may_hold_bools)}
    tensors = {}
    for key, spec in specs.items():
        if key not in value:
            raise bad(f"Missing named input: {key} in 'inputs' object.")
        tensors[key] = to_tensor(value[key], spec, may_hold_bools)
    return tensors  # extra keys are ignored, as TF Serving does


# ---------------------------------------------------------------------------- tensors → JSON


def _strings_to_json(value: Any, as_b64: bool) -> Any:
    if isinstance(value, np.ndarray) and value.ndim:
        return [_strings_to_json(row, as_b64) for row in value]
    raw = value.item() if isinstance(value, np.ndarray | np.generic) else value
    raw = raw if isinstance(raw, bytes) else str(raw).encode()
    return {"b64": base64.b64encode(raw).decode()} if as_b64 else raw.decode("utf-8", errors="replace")


def _jsonable(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OSU":
        return _strings_to_json(array, as_b64=name.endswith("_bytes"))
    return array


def predict_response(outputs: dict[str, np.ndarray], columnar: bool) -> bytes:
    """A predict response body: `predictions` (row format) or `outputs` (columnar), as TF Serving writes it."""
    if not outputs:
        raise bad("Cannot convert empty tensor map to JSON")
    values = {name: _jsonable(name, array) for name, array in outputs.items()}
    if columnar:
        body: Any = {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    else:
        batch = None
        for name, array in outputs.items():
            if array.ndim == 0:
                raise bad(f"Tensor name: {name} has no shape information ")
            if batch is None:
                batch = array.shape[0]
            elif array.shape[0] != batch:
                raise bad(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        if len(values) == 1:
            body = {"predictions": next(iter(values.values()))}
        else:
            body = {"predictions": [{name: value[i] for name, value in values.items()} for i in range(batch)]}
    finite = all(a.dtype.kind != "f" or np.isfinite(a).all() for a in outputs.values())
    if finite:
        return orjson.dumps(body, option=_DUMPS_OPTIONS)
    # TF Serving writes NaN and ±Infinity as bare tokens; orjson would write null.
    return json.dumps(body, default=lambda a: a.tolist(), allow_nan=True).encode()
