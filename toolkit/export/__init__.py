"""ONNX export: graphs built from trained weights, the parity certificate, bundles."""
