"""Sampling text from a trained `lm` model in torch (training-side preview; the runtime has
its own ONNX generator that draws with the same `sample_next`)."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.data.text import prompt_tokens
from toolkit.data.vocab import EOS_ID, Vocabulary
from toolkit.models.model import SequenceModel
from toolkit.models.sampling import NEVER_DRAWN, sample_next


@torch.no_grad()
def generate(
    model: SequenceModel,
    vocab: Vocabulary,
    level: str = "char",
    lowercase: bool = False,
    prompt: str = "",
    max_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> str:
    """Prime the state with the prompt (or <eos>, the boundary a new text follows in training),
    then draw up to `max_tokens` tokens, stopping early at <eos>. Returns the generated text."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in vocab.encode(prompt_tokens(prompt, level, lowercase))] or [EOS_ID]
    logits, state = model(torch.tensor([ids], device=device))
    out: list[str] = []
    for _ in range(max_tokens):
        nxt = sample_next(logits[0, -1].float().cpu().numpy(), rng, temperature, top_k, top_p, NEVER_DRAWN)
        if nxt == EOS_ID:
            break
        out.append(vocab.tokens[nxt])
        logits, state = model(torch.tensor([[nxt]], device=device), state=state)
    model.train(was_training)
    return ("" if level == "char" else " ").join(out)
