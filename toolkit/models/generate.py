"""Sampling text from a trained `lm` model in torch (training-side preview; the runtime has
its own ONNX generator that runs the same `draw` loop)."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.core.data.vocab import Vocabulary
from toolkit.core.sampling import DEFAULT_SAMPLING, Sampling, draw, joiner, prompt_ids
from toolkit.models.model import SequenceModel


@torch.no_grad()
def generate(
    model: SequenceModel,
    vocab: Vocabulary,
    level: str = "char",
    lowercase: bool = False,
    prompt: str = "",
    sampling: Sampling = DEFAULT_SAMPLING,
) -> str:
    """Prime the state with the prompt (or <eos>, the boundary a new text follows in training),
    then draw up to `sampling.max_tokens` tokens, stopping early at <eos>. Returns the text."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    state = None

    def step(ids) -> np.ndarray:
        nonlocal state
        logits, state = model(torch.tensor([list(ids)], dtype=torch.int64, device=device), state=state)
        return logits[0, -1].float().cpu().numpy()

    ids = prompt_ids(vocab, prompt, level, lowercase)
    out = [vocab.tokens[i] for i in draw(step, ids, sampling)]
    model.train(was_training)
    return joiner(level).join(out)
