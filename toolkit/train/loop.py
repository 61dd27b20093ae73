"""The training loop: BPTT over padded batches, truncated BPTT over streams, clipping,
warm-up and schedules, class weights, best-epoch selection, early stopping, a time budget, a
checkpoint every epoch and exact resume.

Selection: an epoch is better when the monitored metric gains more than `min_delta`; when it
merely ties (gains 0..min_delta) a lower validation loss decides. On a small validation set
accuracy ties for many epochs, and keeping the first of them returned undertrained weights.

Exact resume: data order comes from a generator seeded with (seed, epoch), and the torch RNG
(dropout) state is saved with every epoch's checkpoint, so a run interrupted and resumed ends
with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import pickle
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from toolkit.core import tasks
from toolkit.core.atomic import atomic_write_json
from toolkit.core.config import Config
from toolkit.core.data import bucket_batches, load_data, stream_windows
from toolkit.core.data.types import PAD_TARGET, Prepared, SequenceDataset, StreamDataset
from toolkit.core.errors import CheckpointError, ConfigError
from toolkit.core.metrics import LMMetrics, better, metric_mode
from toolkit.core.tasks import default_monitor, metrics_for
from toolkit.models.encoder import detach_state, real_steps
from toolkit.models.model import SequenceModel, build_model
from toolkit.train import augment, distributed
from toolkit.train import checkpoint as ckpt
from toolkit.train.class_weights import class_weights, describe
from toolkit.train.optim import build_optimizer, build_schedule, replan_schedule
from toolkit.train.progress import ProgressLine

STATE_KEYS = frozenset({"model", "optimizer", "schedule", "scaler", "torch_rng", "fingerprint", "epoch", "history"})


@dataclass
class TrainResult:
    out: Path
    epochs_run: int
    best_epoch: int
    monitor: str
    best: dict[str, float]  # metrics of the best epoch (validation, else training)
    history: list[dict[str, Any]]
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)
    sample: str | None = None  # lm: text drawn from the best model
    selection: str = ""  # the rule that chose the best epoch, in words
    stop_reason: str | None = None  # why training ended before --epochs (patience, time budget)

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "monitor": self.monitor,
            "selection": self.selection,
            "metrics": self.best,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "checkpoint": str(self.out / "model.pt"),
            "notes": self.notes,
            **({"sample": self.sample} if self.sample is not None else {}),
        }


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to torch here; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: Config,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    on_start: Callable[[], None] | None = None,
    progress_every: float = 0.0,
) -> TrainResult:
    """Train as `config` says, writing the run directory `config.train.out`.

    `progress`: a tqdm bar per pass; `progress_every` > 0: a plain line on stderr at most that
    often during a pass (for logs, where a bar does not render).

    Data is read and checked before anything is written, so bad input leaves no directory.
    `on_start()` runs once the data, model and config have passed their checks and the run
    directory is written; `on_epoch_end(epoch, record)` after each epoch's checkpoint is on disk.
    """
    config.validate()
    if config.data.data is None:
        raise ConfigError("no training data: give --data FILE (or data.data in the config file)")
    out = Path(config.train.out)
    if not resume and (out / "state.pt").exists():
        raise ConfigError(f"{out} already holds a training run; continue it with --resume {out} or pick another --out")
    prepared = load_data(config)
    _check_time_warp(config, prepared)
    if isinstance(prepared.train, StreamDataset) and config.model.bidirectional:
        raise ConfigError(
            f"task {config.task} on {config.data.data} trains on one long stream with the state carried forward; "
            "a bidirectional model would see the values it must predict. Use --unidirectional"
        )
    w = distributed.world()
    if not w.main:  # rank 0 speaks and writes for the group
        log, progress, progress_every, on_start, on_epoch_end = (lambda msg: None), False, 0.0, None, None
    device = distributed.start(w, pick_device(config.train.device))
    seed_everything(config.train.seed)
    model = build_model(config.model, prepared.input, prepared.output).to(device)
    if w.active:  # same initial weights on every rank, a dropout stream of its own
        torch.manual_seed(config.train.seed + 7919 * w.rank)
    run = _Run(config, prepared, model, device, progress, log, w, progress_every)  # checks the rest of the config first
    params = sum(p.numel() for p in model.parameters())
    amp = " with mixed precision" if run.amp else ""
    ranks = f" x {w.size} processes (DDP, global batch {config.train.batch_size})" if w.active else ""
    log(f"training {config.model.cell} x{config.model.num_layers} ({params:,} parameters) on {device}{amp}{ranks}")
    if resume:
        run.restore(out / "state.pt")
    if w.main:
        ckpt.write_run_files(out, config, prepared.input, prepared.output)
    if on_start is not None:
        on_start()
    try:
        result = run.fit(on_epoch_end)
    except BaseException:
        run.forward = None
        distributed.stop()
        raise
    # Every rank leaves together, the DDP reducer before its process group: a rank that exits
    # while another still works (rank 0 logging to MLflow) aborted in C++ teardown otherwise.
    run.forward = None
    distributed.stop(barrier=True)
    return result


def _check_time_warp(config: Config, prepared: Prepared) -> None:
    """Time warping moves steps in time: for per-sequence targets on feature series only."""
    if config.train.time_warp and (
        prepared.input.kind != "features" or prepared.output.per_step or isinstance(prepared.train, StreamDataset)
    ):
        what = "token inputs" if prepared.input.kind != "features" else "a target at every step"
        raise ConfigError(
            f"train.time_warp {config.train.time_warp:g} resamples feature series in time for a per-sequence head "
            f"(classify, regress to one value per sequence); task {config.task} here has {what}: drop --time-warp"
        )


class _Run:
    """State of one training run between epochs (all of it goes into state.pt)."""

    def __init__(
        self, config: Config, prepared: Prepared, model: SequenceModel, device, progress, log, world=None, every=0.0
    ):
        self.cfg, self.data, self.model, self.device = config, prepared, model, device
        self.world = world or distributed.World()
        self.forward = None  # the DDP wrapper, in fit (after a resume has loaded the weights)
        self.task = config.task
        self.progress, self.progress_every, self.log = progress, every, log
        self.out = Path(config.train.out)
        self.has_val = prepared.val is not None and len(prepared.val) > 0
        labels = prepared.output.labels
        self.monitor, self.mode = default_monitor(self.task, labels)
        if config.train.monitor:  # checked before anything is written, against this task's metrics
            known = {"loss", *metrics_for(self.task, labels, config.data.level).names()}
            if config.train.monitor not in known:
                raise ConfigError(
                    f"train.monitor {config.train.monitor!r} is not a metric of task {self.task}; "
                    f"choose one of {', '.join(sorted(known))}"
                )
            self.monitor, self.mode = config.train.monitor, metric_mode(config.train.monitor)
        if not self.has_val:
            log(f"no validation data: the best epoch is chosen by training loss, not {self.monitor}")
            self.monitor, self.mode = "loss", "min"
        weights = class_weights(config.train.class_weight, self.task, labels, prepared.train)
        if weights is not None:
            log(describe(weights, labels))
        self.class_weight = torch.from_numpy(weights).to(device) if weights is not None else None
        self.warmup_steps = config.train.warmup * _batches_per_epoch(prepared.train, config.train)
        self.steps_done = 0  # optimizer steps over the whole run (warm-up counts them)
        self.optimizer = build_optimizer(model.parameters(), config.train)
        self.schedule = build_schedule(self.optimizer, config.train, self.mode)
        self.amp = config.train.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0  # epochs completed
        self.best_value: float | None = None
        self.best_loss = math.inf  # the best epoch's loss: the tie-breaker
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.fingerprint = {"data": ckpt.fingerprint(config.data.data), "val": ckpt.fingerprint(config.data.val)}

    # ---- resume -------------------------------------------------------------------------
    def restore(self, path: Path) -> None:
        if not path.exists():
            raise CheckpointError(f"{path}: nothing to resume (no state.pt; was the first epoch finished?)")
        try:  # tensors and plain values only: unpickling anything else could run a crafted file's code
            state = torch.load(path, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[-1][:200]
            raise CheckpointError(
                f"{path}: holds objects other than tensors and plain values, which rnnkit does not unpickle "
                f"(a crafted file could run code); this is not a state.pt that rnnkit wrote ({first})"
            ) from None
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read training state ({e})") from None
        if not isinstance(state, dict) or not state.keys() >= STATE_KEYS:
            raise CheckpointError(
                f"{path}: not an rnnkit training state (expected a dict with {', '.join(sorted(STATE_KEYS))})"
            )
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{path}: the data files changed since this run started (sha256 differs); "
                "resume with the original data or start a new run"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        replanned = replan_schedule(self.schedule, self.optimizer, self.cfg.train)
        if replanned:
            self.log(replanned)
        self.scaler.load_state_dict(state["scaler"])
        rank_rng = state.get("rank_rng")
        if self.world.active or rank_rng is not None:
            if rank_rng is None or len(rank_rng) != self.world.size:
                saved = len(rank_rng) if rank_rng is not None else 1
                raise CheckpointError(
                    f"{path}: saved by {saved} process(es); resume it with the same number ({self.world.size} now)"
                )
            torch.set_rng_state(rank_rng[self.world.rank])
        else:
            torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for key in ("epoch", "best_value", "best_epoch", "best_metrics", "bad_epochs", "history"):
            setattr(self, key, state[key])
        self.best_loss = state.get("best_loss", math.inf)
        self.steps_done = state.get("steps_done", 0)
        self.log(f"resuming {self.out} after epoch {self.epoch}")

    def _save_state(self) -> None:  # plain values only, so that restore can load with weights_only
        rank_rng = distributed.gather(self.world, torch.get_rng_state())  # every rank's dropout stream
        if not self.world.main:
            return
        ckpt.atomic_torch_save(
            self.out / "state.pt",
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "rank_rng": rank_rng if self.world.active else None,
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "fingerprint": self.fingerprint,
                **{k: getattr(self, k) for k in ("epoch", "best_value", "best_epoch", "best_metrics", "bad_epochs")},
                "best_loss": self.best_loss,
                "steps_done": self.steps_done,
                "history": self.history,
            },
        )

    # ---- the loop -----------------------------------------------------------------------
    def fit(self, on_epoch_end) -> TrainResult:
        tcfg = self.cfg.train
        for note in self.data.notes:
            self.log(note)
        stop_reason = "patience" if self.bad_epochs >= (tcfg.patience or math.inf) else None
        self.log(f"best epoch chosen by {self.selection()}")
        started_at, epoch_seconds = time.perf_counter(), []
        if self.world.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        while self.epoch < tcfg.epochs and stop_reason is None:
            if self._out_of_time(started_at, epoch_seconds):
                stop_reason = "time budget"
                break
            started = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_metrics = self._run_epoch(self.data.train, training=True)
            record: dict[str, Any] = {"epoch": self.epoch + 1, "lr": lr}
            record.update({f"train_{k}": v for k, v in train_metrics.items()})
            watched = train_metrics
            if self.has_val:
                watched = self._run_epoch(self.data.val, training=False)
                record.update({f"val_{k}": v for k, v in watched.items()})
            value = watched[self.monitor]
            record["seconds"] = time.perf_counter() - started
            epoch_seconds.append(record["seconds"])
            self.epoch += 1
            improved = self._improved(watched)
            if improved:
                self.best_value, self.best_epoch, self.best_metrics, self.bad_epochs = value, self.epoch, watched, 0
                self.best_loss = watched.get("loss", math.inf)
                if self.world.main:
                    ckpt.atomic_torch_save(self.out / "model.pt", self.model.state_dict())
            else:
                self.bad_epochs += 1
            if isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.schedule.step(value)
            else:
                self.schedule.step()
            self.history.append(record)
            self._save_state()
            if self.world.main:
                atomic_write_json(self.out / "metrics.json", {"history": self.history})
            self.log(_epoch_line(record, self.monitor, improved))
            if on_epoch_end is not None:
                on_epoch_end(self.epoch, record)
            if tcfg.patience is not None and self.bad_epochs >= tcfg.patience:
                stop_reason = "patience"
        if stop_reason == "patience":
            self.log(f"early stop: {self.monitor} did not improve for {tcfg.patience} epochs")
        elif stop_reason == "time budget":
            spent = time.perf_counter() - started_at
            self.log(
                f"time budget: stopped after epoch {self.epoch} ({spent:.0f} s of {tcfg.max_time:g} s; "
                f"another epoch takes about {np.mean(epoch_seconds):.0f} s); keeping the best epoch {self.best_epoch}"
            )
        result = TrainResult(
            out=self.out,
            epochs_run=self.epoch,
            best_epoch=self.best_epoch,
            monitor=("val_" if self.has_val else "train_") + self.monitor,
            best=self.best_metrics,
            history=self.history,
            stopped_early=stop_reason is not None,
            notes=list(self.data.notes),
            selection=self.selection(),
            stop_reason=stop_reason,
        )
        if not self.world.main:
            return result
        if tasks.of(self.task).predicts == "tokens":  # a language model: show what it writes
            result.sample = self._sample()
        atomic_write_json(self.out / "metrics.json", {"history": self.history, "summary": result.summary()})
        return result

    def selection(self) -> str:
        where = "val_" if self.has_val else "train_"
        rule = f"{where}{self.monitor} ({self.mode})"
        if self.cfg.train.min_delta:
            rule += f", gains over {self.cfg.train.min_delta:g}"
        if self.monitor != "loss":
            rule += f", ties broken by lower {where}loss"
        return rule

    def _improved(self, watched: dict[str, float]) -> bool:
        tie_break = watched.get("loss", math.inf) if self.monitor != "loss" else None
        return improves(
            watched[self.monitor], tie_break, self.best_value, self.best_loss, self.mode, self.cfg.train.min_delta
        )

    def _out_of_time(self, started_at: float, epoch_seconds: list[float]) -> bool:
        """Whether the next epoch (as long as the mean so far) would end past train.max_time.
        The first epoch always runs; every rank of a DDP group follows rank 0's clock."""
        budget = self.cfg.train.max_time
        if budget is None or not epoch_seconds:
            return False
        late = time.perf_counter() - started_at + float(np.mean(epoch_seconds)) > budget
        if self.world.active:
            late = distributed.all_sum(self.world, [float(late and self.world.main)], self.device)[0] > 0
        return late

    def _sample(self) -> str:
        from toolkit.core.sampling import Sampling
        from toolkit.models.generate import generate

        best = SequenceModel(self.cfg.model, self.data.input, self.data.output).to(self.device)
        best.load_state_dict(torch.load(self.out / "model.pt", map_location=self.device, weights_only=True))
        data = self.cfg.data
        return generate(best, self.data.input.vocab, data.level, data.lowercase, sampling=Sampling(temperature=0.8))

    def _run_epoch(self, dataset: SequenceDataset | StreamDataset, training: bool) -> dict[str, float]:
        tcfg = self.cfg.train
        rng = np.random.default_rng([tcfg.seed, self.epoch]) if training else None
        return run_pass(
            self.model,
            self.task,
            dataset,
            metrics_for(self.task, self.data.output.labels, self.cfg.data.level),
            batch_size=tcfg.batch_size,
            bptt=tcfg.bptt,
            amp=self.amp,
            step=self._step if training else None,
            rng=rng,
            progress=self.progress,
            progress_every=self.progress_every,
            desc=f"epoch {self.epoch + 1}/{tcfg.epochs}" if training else "validate",
            label_smoothing=tcfg.label_smoothing,
            class_weight=self.class_weight,
            time_warp=tcfg.time_warp if training else 0.0,
            world=self.world if training else None,
            forward=self.forward if training else None,
        )

    def _step(self, loss: torch.Tensor) -> float:
        """One optimizer step; returns the gradient norm before clipping. During warm-up the
        step runs at a share of the scheduled rate, which is put back after it (so the epoch
        schedules, which read the group's rate, never see the warm-up)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.clip if self.cfg.train.clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.steps_done += 1
        share = min(1.0, self.steps_done / self.warmup_steps) if self.warmup_steps else 1.0
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] *= share
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for group, lr in zip(self.optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr
        return float(norm)


def improves(
    value: float, loss: float | None, best_value: float | None, best_loss: float, mode: str, min_delta: float
) -> bool:
    """Whether an epoch beats the best so far: its monitored `value` gains more than
    `min_delta`, or it ties (gains 0..min_delta) and its `loss` (the tie-breaker; None for none)
    is lower than the best epoch's. The first epoch is the best so far, even if nan."""
    if best_value is None:
        return True
    if math.isnan(value) or math.isnan(best_value):
        return better(value, best_value, mode)
    gain = (value - best_value) if mode == "max" else (best_value - value)
    if gain > min_delta:
        return True
    return gain >= 0 and loss is not None and loss < best_loss


def run_pass(
    model: SequenceModel,
    task: str,
    dataset: SequenceDataset | StreamDataset,
    metrics,
    batch_size: int,
    bptt: int,
    amp: bool = False,
    step: Callable[[torch.Tensor], float] | None = None,
    rng: np.random.Generator | None = None,
    progress: bool = False,
    desc: str = "",
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
    world: distributed.World | None = None,
    forward: Callable | None = None,
    progress_every: float = 0.0,
    time_warp: float = 0.0,
) -> dict[str, float]:
    """One pass over `dataset`: training when `step` (the optimizer step) is given, else
    evaluation. Padded batches for sequence data, truncated-BPTT windows with the state
    carried (and detached) for streams. Returns the task metrics (plus speed and gradient
    norm when training). With an active `world` (DDP training) each rank takes its rows of every
    batch (`distributed.shard`) and runs `forward` (the DDP wrapper); loss and speed are the
    group's, the other metrics this rank's rows'. `progress`: a tqdm bar; `progress_every` > 0: a
    plain line on stderr at most every that many seconds (toolkit.train.progress). `time_warp` > 0:
    each training batch's series warped in time at that strength (toolkit.train.augment)."""
    training = step is not None
    sequences = tasks.of(task).predicts == "sequences"  # seq2seq: teacher-forced, and decoded to score
    model.train(training)
    device = next(model.parameters()).device
    streaming = isinstance(dataset, StreamDataset)
    batches = stream_windows(dataset, batch_size, bptt) if streaming else bucket_batches(dataset, batch_size, rng)
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=training, file=sys.stderr)
    line = ProgressLine(progress_every, desc, len(batches)) if progress_every > 0 else None
    state = None
    steps, grad_norms, started = 0, [], time.perf_counter()
    sharded = world is not None and world.active
    steps_all = 0.0  # the group's steps so far (DDP)
    for item in bar:
        weight = 1.0
        if sharded:
            item, weight = distributed.shard(item, world)
        if streaming:
            inputs, targets = (torch.from_numpy(a).to(device) for a in item)
            lengths = None
            steps += inputs.shape[0] * inputs.shape[1]
        else:
            inputs = torch.from_numpy(item.inputs).to(device)
            targets = torch.from_numpy(item.targets).to(device)
            lengths = torch.from_numpy(item.lengths)
            steps += int(item.lengths.sum())
            if time_warp:
                inputs = augment.time_warp(inputs, lengths, time_warp, rng)
        with torch.set_grad_enabled(training), torch.autocast("cuda", enabled=amp):
            y, state = (forward or model)(inputs, lengths, targets if sequences else state if streaming else None)
            loss_sum, count = task_loss(model, task, y, targets, lengths, label_smoothing, class_weight)
        loss_value = float(loss_sum.detach())
        if sharded:  # the group's loss and count; gradients averaged by DDP over the ranks
            loss_value, total, steps_all = distributed.all_sum(
                world, [loss_value * weight, count * weight, steps], device
            )
            grad_norms.append(step(loss_sum * (weight * world.size / max(total, 1.0))))
            count = int(total)
        elif training:
            grad_norms.append(step(loss_sum / count))
        if streaming:
            state = detach_state(state)
        metrics.add_loss(loss_value, int(count))
        if weight:
            update_metrics(metrics, task, y.detach().float(), targets, lengths, loss_value, int(count))
        if sequences and not training:
            _score_decoded(model, metrics, item)
        if progress:
            rate = steps / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{loss_value / max(int(count), 1):.4f}", steps_s=f"{rate:.0f}", refresh=False)
        if line is not None:
            line.update(steps_all if sharded else steps, loss_value, int(count))
    bar.close()
    result = metrics.compute()
    if training:
        elapsed = time.perf_counter() - started
        result["steps_per_s"] = (steps_all if sharded else steps) / elapsed if elapsed > 0 else 0.0
        finite = [g for g in grad_norms if math.isfinite(g)]
        result["grad_norm"] = float(np.mean(finite)) if finite else float("nan")
    return result


def task_loss(
    model: SequenceModel,
    task: str,
    y: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor | None,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
):
    """Summed loss and the count it is summed over (so batches of any size average right).
    Class weights average 1 over the training targets, so the count stays the number of targets."""
    y = y.float()
    if tasks.of(task).loss == "cross_entropy":  # per sequence or per step; padded steps ignored
        flat = targets.reshape(-1)
        logits = y.reshape(flat.shape[0], -1)
        loss = F.cross_entropy(
            logits,
            flat,
            weight=class_weight,
            ignore_index=PAD_TARGET,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        return loss, int((flat != PAD_TARGET).sum())
    # squared_error: on the normalised scale, padded steps masked out
    err = (model.normalised(y) - model.normalised(targets.float())) ** 2
    if y.dim() == 3 and lengths is not None:
        mask = real_steps(lengths, y.shape[1], y.device).unsqueeze(-1)
        return (err * mask).sum(), int(mask.sum()) * y.shape[-1]
    return err.sum(), err.numel()


def update_metrics(metrics, task: str, y, targets, lengths, loss_sum: float, count: int) -> None:
    if isinstance(metrics, LMMetrics):  # its metric is the loss itself: no second pass over the logits
        metrics.update(loss_sum, count)
    else:
        lengths = lengths.numpy() if lengths is not None else None
        tasks.of(task).score(metrics, y.cpu().numpy(), targets.cpu().numpy(), lengths)


def _score_decoded(model, metrics, batch) -> None:
    """Greedy-decode a validation batch with the shared search and score it against its targets."""
    from toolkit.core.search import Search
    from toolkit.models.seq2seq import translate

    sources = [row[:n] for row, n in zip(batch.inputs, batch.lengths, strict=True)]
    hypotheses = translate(model, sources, Search(beam=1), batch_size=len(sources))
    references = [[int(t) for t in row if t >= 0][:-1] for row in batch.targets]  # without <eos>
    metrics.update([h[0].tokens for h in hypotheses], references)


def _batches_per_epoch(train: SequenceDataset | StreamDataset, tcfg) -> int:
    """Optimizer steps in one epoch: what `bucket_batches` / `stream_windows` will cut."""
    if isinstance(train, StreamDataset):
        rows = max(1, min(tcfg.batch_size, len(train)))
        return math.ceil((len(train) // rows) / tcfg.bptt)
    return math.ceil(len(train) / tcfg.batch_size)


def _epoch_line(record: dict[str, Any], monitor: str, improved: bool) -> str:
    shown = {k: v for k, v in record.items() if k not in ("epoch", "seconds") and isinstance(v, float)}
    parts = [f"{k} {v:.4g}" for k, v in shown.items()]
    mark = " *" if improved else ""
    return f"epoch {record['epoch']}: " + ", ".join(parts) + f" ({record['seconds']:.1f}s){mark}"
