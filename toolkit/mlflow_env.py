"""MLflow client settings every rnnkit command that talks to MLflow starts with, in one place.

Environment variables, set only where the user has not set them, before mlflow is imported or
called: capped HTTP retries and timeout (so a dead tracking server is reported in seconds, not
after MLflow's default minutes of back-off), and no artifact progress bars cluttering stderr.
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
