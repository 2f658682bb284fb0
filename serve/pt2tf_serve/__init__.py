"""An embedded server that stands in for tensorflow_model_server: same flags, files and protocol."""
