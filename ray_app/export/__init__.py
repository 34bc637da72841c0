"""Export: the best trained stage in deployment formats (ONNX), checked against torch."""
