"""Protocol messages both doors share: tensors as TensorProtos, status and metadata as TF Serving builds them."""

from __future__ import annotations

import inspect

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from .core import Version
from .status import ServingError

# TensorProto field per dtype, as Tensor::AsProtoField fills it.
_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def _shape(array: np.ndarray) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape])


def tensor_proto(array: np.ndarray, as_content: bool) -> tensor_pb2.TensorProto:
    """An output array as TF Serving encodes it: typed repeated fields, or packed tensor_content when asked."""
    dtype = types_pb2.DT_STRING if array.dtype.kind in "OSU" else tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=_shape(array))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    elif as_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    else:
        getattr(proto, _FIELD[dtype]).extend(array.ravel().tolist())
    return proto


def from_tensor_proto(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """A request's TensorProto as an array, or INVALID_ARGUMENT naming the input."""
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError):
        raise ServingError("INVALID_ARGUMENT", f"tensor parsing error: {alias}") from None


def model_status(versions: list[Version]) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse for the listed versions."""
    response = get_model_status_pb2.GetModelStatusResponse()
    states = get_model_status_pb2.ModelVersionStatus.State
    for version in versions:
        entry = response.model_version_status.add(version=version.number, state=states.Value(version.state))
        entry.status.SetInParent()  # TF Serving always reports a status: error_code OK when there is no error
        if version.error is not None:
            entry.status.error_code = _error_code(version.error.code)
            entry.status.error_message = version.error.message
    return response


def _error_code(name: str) -> int:
    from tensorflow.core.protobuf import error_codes_pb2

    return error_codes_pb2.Code.Value(name)


def model_metadata(version: Version, fields: list[str]) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadataResponse with the signature_def map, as TF Serving fills it."""
    if not fields:
        raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != "signature_def":
            raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = version.servable.name
    response.model_spec.version.value = version.number
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in version.servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_map)
    return response


def model_spec(name: str, version: int, signature: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


_PRINT_DEFAULTS = (
    {"always_print_fields_with_no_presence": True}
    if "always_print_fields_with_no_presence" in inspect.signature(json_format.MessageToJson).parameters
    else {"including_default_value_fields": True}
)


def to_json(message) -> str:
    """A message as TF Serving's REST API prints protos: field names kept, defaults printed."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=1, **_PRINT_DEFAULTS) + "\n"


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> str:
    """The REST metadata body, assembled as TF Serving's http_rest_api_util.cc assembles it."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return (
        '{\n"model_spec":'
        + to_json(response.model_spec)
        + ',\n"metadata": {"signature_def": '
        + to_json(signature_map)
        + "}\n}\n"
    )
