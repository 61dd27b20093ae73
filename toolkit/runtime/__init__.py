"""The serving engine: ONNX Runtime and NumPy only (no torch, no mlflow), so a deployment needs
neither and starts fast. tests/test_runtime.py proves the import isolation."""

# How `rnnkit serve` speaks WebSocket on /v1/streams (the first: the default): picows' protocol
# handed the socket by uvicorn (toolkit.runtime.fastws), or uvicorn's own WebSocket protocols on
# the websockets package, through the ASGI app.
WS_PROTOCOLS = ("picows", "websockets-sansio", "websockets")
