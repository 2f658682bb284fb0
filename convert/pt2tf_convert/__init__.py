"""PyTorch → ONNX export (torch env) and ONNX → SavedModel conversion (each lane's TF env)."""
