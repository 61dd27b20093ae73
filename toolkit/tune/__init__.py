"""Hyperparameter search over rnnkit training runs with Optuna (`rnnkit tune`).

- `space`: what is searched, per task, and the YAML that overrides it (checked like hostile input).
- `trial`: one trial = one training run (`toolkit.pipeline.run`), pruned on its validation curve.
- `study`: the Optuna study in its storage: budget, stale trials, worker processes, the summary.
- `parent`: the study's MLflow parent run, the best trial's certified bundle, its registration.
- `worker`: `python -m toolkit.tune.worker SPEC`, one of the --jobs processes.

Nothing on the serving side imports this package (or optuna): an import-linter contract says so.
"""
