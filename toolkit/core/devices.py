"""Device names the commands accept (no imports: `rnnkit --help` must stay fast)."""

TRAIN_DEVICES = ("auto", "cpu", "cuda")  # torch
RUNTIME_DEVICES = ("auto", "cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers
