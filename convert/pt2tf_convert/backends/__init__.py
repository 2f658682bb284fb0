"""Converter backends: siblings that each turn an ONNX file into a TensorFlow graph, and nothing else.

A backend module defines NAME, describe(), versions(), unsupported_ops(model) and
convert(model, onnx_path, workdir) -> ConvertedModel. Its converter's quirks stay inside it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import onnx

from ..signatures import ConvertedModel

MODULES = {"onnx-tf": "onnx_tf_backend", "onnx2tf": "onnx2tf_backend"}


class ConversionError(RuntimeError):
    """The ONNX file cannot become the SavedModel we ship; the message says why and what to do."""


class Backend(Protocol):
    NAME: str

    def describe(self) -> str: ...
    def versions(self) -> dict[str, str]: ...
    def unsupported_ops(self, model: onnx.ModelProto) -> list[str]: ...
    def convert(self, model: onnx.ModelProto, onnx_path: Path, workdir: Path) -> ConvertedModel: ...


def load_backend(name: str) -> Backend:
    """Import the backend module for converter `name` (only its own lane's env has its packages)."""
    if name not in MODULES:
        raise ConversionError(f"unknown converter '{name}': known are {', '.join(MODULES)}")
    try:
        return importlib.import_module(f".{MODULES[name]}", __name__)
    except ImportError as exc:
        raise ConversionError(
            f"converter '{name}' is not importable here ({exc}); run it in its lane's env (nox -s convert-<lane>)"
        ) from None
