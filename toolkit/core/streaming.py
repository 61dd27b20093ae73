"""Which models can stream (step or chunk at a time, state carried) and which read whole
sequences only: the one rule behind whether a bundle has step.onnx (the exporter), whether its
manifest has a state spec (the schema), whether a step graph can be built, and every streaming
refusal (Engine.stream, `rnnkit stream`, the server's /v1/streams, the Triton repository).
Frame-stacked models stream, a frame (K steps) at a time: `frame_stack`."""

from __future__ import annotations


def whole_sequences_only(bidirectional: bool, normalize: str = "dataset", pool: str = "last") -> str | None:
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
    return None


def of_manifest(manifest: dict) -> str | None:
    """`whole_sequences_only` for a bundle's manifest (bundles before per-sequence normalisation
    have no `input.normalize`: dataset)."""
    normalize = manifest["input"].get("normalize", "dataset")
    model = manifest["model"]
    return whole_sequences_only(model["bidirectional"], normalize, model.get("pool", "last"))


def frame_stack(manifest: dict) -> int:
    """Steps per output of a stream: a frame-stacked model (model.frame_stack: K) steps once per
    frame of K steps, so a stream buffers steps until a frame is whole and answers once per frame;
    1 for every other model (bundles before frames have no model.frame_stack)."""
    return int(manifest.get("model", {}).get("frame_stack", 1))


def frames_of(steps, k: int):
    """How many frames a sequence of `steps` steps has, ceil(steps / k) (an int, or an array or
    tensor of lengths)."""
    return -(-steps // k)
