"""Which models can stream (step or chunk at a time, state carried) and which read whole
sequences only: the one rule behind whether a bundle has step.onnx (the exporter), whether its
manifest has a state spec (the schema), whether a step graph can be built, and every streaming
refusal (Engine.stream, `rnnkit stream`, the server's /v1/streams, the Triton repository)."""

from __future__ import annotations


def whole_sequences_only(
    bidirectional: bool, normalize: str = "dataset", pool: str = "last", frame_stack: int = 1
) -> str | None:
    """Why a model cannot stream, in words that end a sentence; None when it can."""
    if bidirectional:
        return (
            "a bidirectional model cannot stream: its backward direction reads each sequence from its end, so no "
            "output is final until the whole sequence has arrived"
        )
    if normalize == "sequence":
        return (
            "a model normalised per sequence (model.normalize: sequence) cannot stream: every step is scaled by "
            "the mean and std of its whole sequence, so no output is final until the whole sequence has arrived"
        )
    if pool != "last":
        return (
            f"a model that pools its outputs over time (model.pool: {pool}) cannot stream: its summary is the {pool} "
            "over every step, so no output is final until the whole sequence has arrived"
        )
    if frame_stack > 1:
        return (
            f"a frame-stacked model (model.frame_stack: {frame_stack}) reads whole sequences only for now: its step "
            f"graph would need a stream's steps in frames of {frame_stack}, which streams do not buffer yet"
        )
    return None


def of_manifest(manifest: dict) -> str | None:
    """`whole_sequences_only` for a bundle's manifest (bundles before per-sequence normalisation
    have no `input.normalize`: dataset)."""
    normalize = manifest["input"].get("normalize", "dataset")
    model = manifest["model"]
    frame_stack = model.get("frame_stack", 1)
    return whole_sequences_only(model["bidirectional"], normalize, model.get("pool", "last"), frame_stack)
