"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import math

import torch

from toolkit.core.config import TrainConfig


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, mode: str):
    """Stepped once per epoch. `plateau` halves the rate when the monitored metric stalls for
    two epochs; `step` halves it every third of the run; `cosine` anneals to zero at the end."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.5)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=2)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def replan_schedule(schedule, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> str | None:
    """After `--resume --epochs N` with a new N: a restored cosine or step schedule still holds
    the old run length (cosine would climb back up past its old end). Re-plan it so the epochs
    left follow the schedule of a run planned for N epochs from the start. Returns what changed
    (None when the length is unchanged, which keeps resume bit-exact)."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    if isinstance(schedule, cosine) and schedule.T_max != cfg.epochs:
        was = f"annealing to zero at epoch {schedule.T_max}"
        schedule.T_max = cfg.epochs
        factor = (1 + math.cos(math.pi * min(schedule.last_epoch, cfg.epochs) / cfg.epochs)) / 2
    elif isinstance(schedule, torch.optim.lr_scheduler.StepLR) and schedule.step_size != max(1, cfg.epochs // 3):
        was = f"halving every {schedule.step_size} epochs"
        schedule.step_size = max(1, cfg.epochs // 3)
        factor = schedule.gamma ** (schedule.last_epoch // schedule.step_size)
    else:
        return None
    for group, base in zip(optimizer.param_groups, schedule.base_lrs, strict=True):
        group["lr"] = base * factor
    return (
        f"{cfg.schedule} schedule re-planned for {cfg.epochs} epochs (was {was}): "
        f"lr {optimizer.param_groups[0]['lr']:.3g} at epoch {schedule.last_epoch + 1}"
    )
