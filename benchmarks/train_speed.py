"""Training throughput: rnnkit's training loop against a plain PyTorch loop over the same
`nn.RNN`/`nn.LSTM`/`nn.GRU`, side by side in one run (interleaved rounds, medians).

    .venv/bin/python -m benchmarks.train_speed [--rounds 3] [--epochs 3] [--threads N] [--json out.json]

- rnnkit: `toolkit.train.loop.train` (what `rnnkit train` runs) on a classify data set of feature
  series written as JSONL, read from `metrics.json`: each epoch's `steps_per_s` (real time steps
  per second of the training pass: batching, normalisation, packing where lengths differ, loss,
  metrics, clipping, Adam). The first epoch is left out (warm-up), as for the plain loop.
- plain: the pytorch/examples word_language_model style: a module holding one `nn.LSTM` (or
  RNN, GRU) and a `nn.Linear` on the final states, Adam, gradient clipping, over the same
  batches of the same data (rnnkit's length-bucketed batches, as tensors made before timing);
  ragged batches packed with `pack_padded_sequence` (what torch needs for correct final states),
  uniform ones not.
- every cell, uniform lengths (every sequence `--steps` long) and ragged (half to one and a half
  times that), bidirectional (or `--unidirectional`) 1 x `--hidden`, batch `--batch`. A
  unidirectional rnnkit model trains padded batches unpacked (their state is not needed), where
  the plain loop packs them as torch needs for correct final states.

Overhead = plain steps/s / rnnkit steps/s - 1 (positive: rnnkit slower). Target <= 10%, and GRU no
slower than plain torch GRU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CELLS = ("rnn", "lstm", "gru")


def write_data(path: Path, n: int, steps: int, features: int, ragged: bool, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(n):
            t = int(rng.integers(steps // 2, steps * 3 // 2 + 1)) if ragged else steps
            x = rng.normal(size=(t, features)).round(3)
            f.write(json.dumps({"features": x.tolist(), "label": str(i % 4)}) + "\n")
    return path


def rnnkit_epochs(data: Path, out: Path, cell: str, args) -> list[float]:
    """steps/s of each training epoch of rnnkit's loop (after the first)."""
    from toolkit.core.config import Config
    from toolkit.train.loop import train

    cfg = Config(task="classify")
    cfg.data.data, cfg.data.val_fraction = str(data), 0.02
    cfg.model.cell, cfg.model.hidden_size, cfg.model.bidirectional = cell, args.hidden, not args.unidirectional
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device = args.epochs, args.batch, "cpu"
    cfg.train.out = str(out)
    train(cfg, progress=False, log=lambda m: None)
    history = json.loads((out / "metrics.json").read_text())["history"]
    return [h["train_steps_per_s"] for h in history[1:]]


def plain_epochs(data: Path, cell: str, args) -> list[float]:
    """steps/s of each epoch of a plain PyTorch loop over the same batches (after the first)."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    from toolkit.core.config import Config
    from toolkit.core.data.batching import bucket_batches
    from toolkit.core.data.load import load_data

    cfg = Config(task="classify")
    cfg.data.data, cfg.data.val_fraction = str(data), 0.02
    prepared = load_data(cfg)
    batches = [
        (torch.from_numpy(b.inputs), torch.from_numpy(b.targets), torch.from_numpy(b.lengths))
        for b in bucket_batches(prepared.train, args.batch, np.random.default_rng(0))
    ]
    module = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.bidirectional = not args.unidirectional
            self.rnn = module(args.features, args.hidden, batch_first=True, bidirectional=self.bidirectional)
            self.head = nn.Linear((2 if self.bidirectional else 1) * args.hidden, 4)

        def forward(self, x, lengths):
            if bool((lengths == x.shape[1]).all()):
                _, h = self.rnn(x)
            else:
                _, h = self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            h = h[0] if isinstance(h, tuple) else h
            return self.head(torch.cat([h[0], h[1]], dim=-1) if self.bidirectional else h[0])

    torch.manual_seed(0)
    model = Plain()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _ in range(args.epochs):
        steps, started = 0, time.perf_counter()
        for x, y, lengths in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x, lengths), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += int(lengths.sum())
        rates.append(steps / (time.perf_counter() - started))
    return rates[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="per round; the first is warm-up")
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--unidirectional", action="store_true", help="one direction (default: two)")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"training throughput, {'uni' if args.unidirectional else 'bi'}directional 1x{args.hidden}, "
        f"{args.features} features, batch {args.batch}, "
        f"{args.sequences} sequences of {args.steps} steps (ragged: {args.steps // 2}..{args.steps * 3 // 2}); "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.epochs - 1} timed epochs, medians"
    )
    print(f"{'cell':<5} {'batches':<8} {'plain steps/s':>14} {'rnnkit steps/s':>15} {'overhead':>9}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ragged in (False, True):
            kind = "ragged" if ragged else "uniform"
            data = write_data(Path(tmp, f"{kind}.jsonl"), args.sequences, args.steps, args.features, ragged)
            for cell in args.cells.split(","):
                plain, ours = [], []
                for r in range(args.rounds):  # taking turns, in a new order each round
                    first_plain = r % 2 == 0
                    for who in ("plain", "rnnkit") if first_plain else ("rnnkit", "plain"):
                        if who == "plain":
                            plain += plain_epochs(data, cell, args)
                        else:
                            ours += rnnkit_epochs(data, Path(tmp, f"run-{kind}-{cell}-{r}"), cell, args)
                p, o = statistics.median(plain), statistics.median(ours)
                row = {"cell": cell, "batches": kind, "plain": p, "rnnkit": o, "overhead": p / o - 1}
                rows.append(row)
                print(f"{cell:<5} {kind:<8} {p:>14,.0f} {o:>15,.0f} {row['overhead']:>+9.1%}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
