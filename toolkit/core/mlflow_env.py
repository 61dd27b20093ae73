"""MLflow client settings every rnnkit command that talks to MLflow starts with, in one place.

Environment variables, set only where the user has not set them, before mlflow is imported or
called: capped HTTP retries and timeout (MLflow's client retries 7 times with exponential
back-off, minutes on a dead server; rnnkit reports it in seconds), and no artifact progress bars
for a few small files burying the command's own output.
Imports neither mlflow nor torch.
"""

from __future__ import annotations

import os

MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_defaults() -> None:
    for key, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)
