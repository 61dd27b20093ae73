"""Test session setup: MLflow records go to a temporary SQLite store, never to the working tree
(`rnnkit train` records runs by default; subprocesses inherit the environment)."""

from __future__ import annotations

import os
import signal
import tempfile

_STORE = tempfile.mkdtemp(prefix="rnnkit-mlflow-")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STORE}/mlflow.db"
os.environ.setdefault("MPLCONFIGDIR", _STORE)
os.environ["RNNKIT_CACHE"] = os.path.join(_STORE, "cache")  # models downloaded by URI
# A suite started in the background of a non-interactive shell (`make test &`, nohup) inherits
# SIGINT ignored, and so would every `rnnkit` it starts: the Ctrl-C tests need it delivered.
# (Handlers reset to the default at exec; only "ignored" is inherited.)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session):
    # Create the store's tables once: CLI tests start many `rnnkit train` processes at once, and
    # MLflow's first-use schema migration of one SQLite file is not safe to run concurrently.
    try:
        from mlflow import MlflowClient
    except ImportError:  # a machine for the GPU tests alone (benchmarks/gpu_check.sh): no MLflow tests run
        return

    # The default experiment's artifacts go to the temporary store too, not to ./mlruns.
    MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).create_experiment("rnnkit", artifact_location=f"{_STORE}/artifacts")
