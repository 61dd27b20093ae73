"""The serving engine: ONNX Runtime and NumPy only (no torch, no mlflow), so a deployment needs
neither and starts fast. tests/test_runtime.py proves the import isolation."""
