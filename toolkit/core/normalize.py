"""Per-sequence normalisation of feature inputs (`model.normalize: sequence`): its definition and
the data it applies to. The torch model, the ONNX graph and the NumPy oracle each implement it
from this text; the manifest records it (`input.normalize`, `input.normalize_eps`).

For sequence b with n = lengths[b] real steps, per feature (steps t >= n are padding, ignored):

    d_t  = x_t - x_0                              t < n
    m    = (1/n) sum_t d_t
    v    = (1/n) sum_t (d_t - m)^2                population variance
    x'_t = (d_t - m) / sqrt(v + EPS)              padded steps: x'_t = 0

that is (x_t - mean) / sqrt(var + EPS) over the sequence's own real steps. Centring about the
first step changes nothing in exact arithmetic, but in float32 a constant series has d = 0
exactly and so comes out exactly 0 (a mean summed in float32 can miss the value by an ulp, which
1/sqrt(EPS) would blow up: to about 5 for a feature near 5000), and a series with a large offset
keeps its digits. A sequence of length 1 is all zeros. EPS bounds the scale-up: a series whose
std is well above sqrt(EPS) = 1e-4 gets unit variance, a (nearly) constant one goes to (nearly) 0
instead of having its rounding noise blown up to unit size.

The training set's mean/std are not applied on top: after this every feature of every sequence
has mean 0 and variance 1 (up to EPS), so statistics of the normalised training data would be
(0, 1) and change nothing. The model keeps the raw data's as before (the manifest records them;
the certificate draws its inputs around them).
"""

from __future__ import annotations

from toolkit.core.errors import ConfigError

SEQUENCE = "sequence"
EPS = 1e-8


def check(normalize: str, task: str, input_kind: str, stream: bool = False, data: str | None = None) -> None:
    """ConfigError unless per-sequence normalisation (when asked for) fits the data: feature
    inputs read as separate sequences."""
    if normalize != SEQUENCE:
        return
    where = f"task {task}" + (f" on {data}" if data else "")
    if input_kind != "features":
        raise ConfigError(
            f"model.normalize: sequence scales feature inputs by each sequence's own mean and std, but {where} "
            "reads tokens; drop it (--normalize dataset, the default)"
        )
    if stream:
        raise ConfigError(
            f"model.normalize: sequence needs whole sequences, but {where} trains on one long stream with the state "
            "carried forward; use --normalize dataset, or give the data as separate sequences (JSON Lines with "
            '"features")'
        )
