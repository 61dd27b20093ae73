"""Recording a training run in MLflow: params, per-epoch metrics, tags, artifacts, the logged
model (the bundle as a pyfunc), and optionally a registered version.

MLflow is a record of the run, never a condition for it: when the tracking store cannot be
reached or fails mid-run, the tracker says so once, stops calling MLflow, and training goes on
with everything kept in the run directory (`rnnkit register OUT/bundle` records the model later).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.core.atomic import atomic_write_json
from toolkit.core.config import Config
from toolkit.core.errors import first_line
from toolkit.core.mlflow_env import apply_defaults
from toolkit.train.checkpoint import fingerprint, read_json
from toolkit.train.distributed import world

RUN_FILES = ("config.json", "spec.json", "vocab.json", "labels.json", "metrics.json", "model.pt")


def flat_params(config: Config) -> dict[str, str]:
    """Every config value as an MLflow param named section.key (task stays `task`)."""
    params = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            params.update({f"{section}.{k}": _text(v) for k, v in values.items()})
        else:
            params[section] = _text(values)
    return params


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the MLflow call in progress returns, then deliver it. Interrupted
    inside a SQLite store's write, the call leaves its transaction open, and ending the run as
    KILLED then waits on that very lock until "database is locked". A second Ctrl-C stops at once."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield  # signals go to the main thread; SIG_IGN / SIG_DFL are left as they are
        return
    pending: list[int] = []

    def hold(signum, frame):
        if pending:
            previous(signum, frame)
        pending.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            previous(pending[0], None)  # Python's default handler raises KeyboardInterrupt


class Tracker:
    def __init__(
        self,
        config: Config,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        resume: bool = False,
        log: Callable[[str], None] = print,
        tags: dict[str, str] | None = None,
    ):
        self.config = config
        self.tags = tags  # set on a new run (a tuning trial: mlflow.parentRunId, its study and number)
        self.given_uri = tracking_uri
        self.resume = resume
        self.log = log
        self.mlflow = None  # imported by start(), once the run's input has passed its checks
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
        self.run_id: str | None = None
        self.failed: str | None = None  # why MLflow was given up on
        self.model_info = None
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "rnnkit"

    # Each MLflow call goes through here: the first failure disables tracking, loudly, once.
    def _safely(self, what: str, fn: Callable[[], Any]) -> Any:
        if self.failed:
            return None
        try:
            with interrupts_deferred():
                return fn()
        except Exception as e:  # the store may fail in any way: network, HTTP, database, disk
            self.failed = f"{what}: {type(e).__name__}: {first_line(e)}"
            self.log(
                f"warning: MLflow tracking at {self.tracking_uri} failed ({self.failed}); training goes on and "
                "the run directory keeps everything; record the model later with `rnnkit register`"
            )
            return None

    def start(self) -> None:
        """Start the MLflow run; a resumed training run continues its MLflow run (same store)."""
        apply_defaults()
        import mlflow

        self.mlflow, cfg = mlflow, self.config
        if self.given_uri:
            mlflow.set_tracking_uri(self.given_uri)
        self.tracking_uri = mlflow.get_tracking_uri()
        link = Path(cfg.train.out) / "mlflow.json"
        previous = read_json(link) if self.resume and link.is_file() else {}
        same_store = previous.get("tracking_uri") == self.tracking_uri

        def begin():
            mlflow.set_experiment(self.experiment)
            run_id = previous.get("run_id") if same_store else None
            name = None if run_id else (self.tags or {}).get("mlflow.runName", Path(cfg.train.out).name)
            run = mlflow.start_run(run_id=run_id, run_name=name, tags=None if run_id else self.tags)
            self.run_id = run.info.run_id
            Path(cfg.train.out).mkdir(parents=True, exist_ok=True)
            atomic_write_json(link, {"run_id": self.run_id, "tracking_uri": self.tracking_uri})
            if run_id:  # params and tags were logged when the run began
                return
            mlflow.log_params({**flat_params(cfg), "world_size": world().size})  # processes (DDP)
            mlflow.set_tags(
                {
                    "task": cfg.task,
                    "cell": cfg.model.cell,
                    "directions": "2" if cfg.model.bidirectional else "1",
                    "layers": str(cfg.model.num_layers),
                    "data_sha256": fingerprint(cfg.data.data) or "",
                    "val_sha256": fingerprint(cfg.data.val) or "",
                    "run_dir": str(Path(cfg.train.out).resolve()),
                }
            )

        self._safely("starting the run", begin)
        if self.run_id:
            self.log(f"MLflow: run {self.run_id} in experiment {self.experiment!r} at {self.tracking_uri}")

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, int | float)}
        self._safely(f"logging epoch {epoch}", lambda: self.mlflow.log_metrics(metrics, step=epoch))

    def finish(self, result, bundle: Path | None) -> None:
        """Artifacts, the training curve, the logged model with its metrics, and end the run."""
        mlflow, out = self.mlflow, Path(result.out)
        if mlflow is None:  # never started
            return

        def artifacts():
            for name in RUN_FILES:
                if (out / name).is_file():
                    mlflow.log_artifact(str(out / name), artifact_path="run")
            if bundle is not None and (bundle / "parity.json").is_file():
                mlflow.log_artifact(str(bundle / "parity.json"))
            figure = training_curve(result.history, result.monitor)
            mlflow.log_figure(figure, "training_curve.png")

        self._safely("logging artifacts", artifacts)
        if bundle is not None:
            self._safely("logging the model", lambda: self._log_model(result, bundle))
        self.end("FAILED" if self.failed else "FINISHED")

    def _log_model(self, result, bundle: Path) -> None:
        from toolkit.tracking.pyfunc import log_bundle

        mlflow = self.mlflow
        self.model_info = log_bundle(bundle, name="model", step=result.best_epoch)
        # MLflow 3: metrics logged with the model's id show on the model (log_model linked the run's
        # params already); they also land on the run, at the best epoch's step.
        best = {k: float(v) for k, v in result.best.items() if isinstance(v, int | float)}
        prefix = result.monitor.split("_", 1)[0] + "_"  # val_ or train_
        mlflow.log_metrics(
            {prefix + k: v for k, v in best.items()}, step=result.best_epoch, model_id=self.model_info.model_id
        )
        parity = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["parity"]
        check = parity.get("metric")
        if check:  # a reduced-precision bundle: its metric next to fp32's, and the drop
            precision = parity["precision"]
            mlflow.log_param("precision", precision)
            drop = {f"fp32_{check['metric']}": check["fp32"], f"{precision}_{check['metric']}": check["reduced"]}
            drop["precision_metric_drop"] = check["drop"]
            mlflow.log_metrics(drop, step=result.best_epoch, model_id=self.model_info.model_id)

    def summary(self) -> dict:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "run_id": self.run_id,
            "model_uri": self.model_info.model_uri if self.model_info else None,
            "failed": self.failed,
        }

    def end(self, status: str) -> None:
        """End the MLflow run with `status`; after a failure this is one last best-effort call, so
        a store that failed part-way (e.g. while logging the model) does not keep the run RUNNING."""
        if self.mlflow is None or not self.run_id:
            return
        if not self.failed:
            self._safely("ending the run", lambda: self.mlflow.end_run(status))
            return
        with contextlib.suppress(Exception):  # the store is known to be failing; that was reported once
            self.mlflow.end_run(status)

    def abort(self, status: str = "KILLED") -> None:
        self.end(status)


def training_curve(history: list[dict], monitor: str):
    """Loss (and the monitored metric) per epoch, training and validation, as a matplotlib figure."""
    os.environ.setdefault("MPLCONFIGDIR", tempfile.gettempdir())
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    metric = monitor.split("_", 1)[1]
    panels = ["loss"] + ([metric] if metric != "loss" else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{name}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
