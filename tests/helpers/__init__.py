"""Helpers shared by tests: small real ONNX models built with onnx.helper."""
