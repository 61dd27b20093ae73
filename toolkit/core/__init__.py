"""The torch-free core: what training, export, the runtime and tracking all need, in NumPy and the
standard library only (no torch, onnx, onnxruntime or mlflow; `make lint` enforces it with
import-linter): configs and the task table, errors, atomic writes, JSON text policy, data readers
and vocabularies, metrics, sampling, and the bundle format (manifest schema, reading, writing)."""
