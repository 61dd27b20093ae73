"""The bundle manifest's schema (format version 1), checked before anything reads a field.

Typed models (pydantic, already a dependency of the server) rather than hand-written checks:
every field has a type, a range and, where the exporter writes a fixed set, that set; a manifest
that does not match is refused with the field's path. Graph names are the two the format knows
(so none can point outside the bundle); sizes are bounded so that no field can make a reader
allocate without limit. Informational sections (`producer`, `source`, extra `model` and `parity`
keys) are checked for type only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from toolkit.core import tasks
from toolkit.core.config import MAX_FRAME_STACK
from toolkit.core.streaming import whole_sequences_only

MAX_VOCAB = 2**24
MAX_WIDTH = 2**16  # features per step, hidden units, targets
MAX_LAYERS = 256
MAX_GRAPH_BYTES = 2**31  # protobuf's own limit for one ONNX file

Count = Annotated[StrictInt, Field(ge=1, le=MAX_WIDTH)]
Finite = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False)]
Positive = Annotated[StrictFloat | StrictInt, Field(gt=0, allow_inf_nan=False)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokensInput(Strict):
    kind: Literal["tokens"]
    name: Literal["tokens"]
    vocab: list[StrictStr] = Field(min_length=4, max_length=MAX_VOCAB)  # <pad> <unk> <bos> <eos> first
    vocab_size: Annotated[StrictInt, Field(ge=4, le=MAX_VOCAB)]
    level: Literal["char", "word"] | None = None
    lowercase: StrictBool = False

    @model_validator(mode="after")
    def sized(self):
        if len(self.vocab) != self.vocab_size:
            raise ValueError(f"vocab has {len(self.vocab)} entries but vocab_size is {self.vocab_size}")
        return self


class FeaturesInput(Strict):
    kind: Literal["features"]
    name: Literal["features"]
    num_features: Count
    mean: list[Finite]  # the training data's; applied only when normalize is dataset
    std: list[Positive]
    note: StrictStr | None = None
    # sequence: each sequence by its own mean and std, with this eps (toolkit.core.normalize).
    # Written only then, so that readers from before it read every other bundle as they did.
    normalize: Literal["dataset", "sequence"] = "dataset"
    normalize_eps: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None

    @model_validator(mode="after")
    def sized(self):
        if not len(self.mean) == len(self.std) == self.num_features:
            raise ValueError(f"mean and std must each have num_features ({self.num_features}) values")
        if (self.normalize == "sequence") != (self.normalize_eps is not None):
            raise ValueError("normalize_eps is given exactly when normalize is sequence")
        return self


class Output(Strict):
    name: Literal["logits", "values", "logprobs"]  # logprobs: decoder_step.onnx's (seq2seq)
    per_step: StrictBool
    labels: list[StrictStr] | None = Field(None, min_length=1, max_length=MAX_VOCAB)
    # seq2seq: the target vocabulary (<pad> <unk> <bos> <eos> first) and its level
    vocab: list[StrictStr] | None = Field(None, min_length=4, max_length=MAX_VOCAB)
    vocab_size: Annotated[StrictInt, Field(ge=4, le=MAX_VOCAB)] | None = None
    level: Literal["char", "word"] | None = None
    num_targets: Count | None = None
    target_mean: list[Finite] | None = Field(None, max_length=MAX_WIDTH)
    target_std: list[Positive] | None = Field(None, max_length=MAX_WIDTH)

    @model_validator(mode="after")
    def sized(self):
        if (self.vocab is None) != (self.vocab_size is None) or (self.vocab and len(self.vocab) != self.vocab_size):
            raise ValueError("vocab and vocab_size go together, vocab_size being the number of vocab entries")
        return self


class Reader(Strict):
    level: Literal["char", "word"]
    lowercase: StrictBool
    target_columns: list[Name] | None = Field(max_length=MAX_WIDTH)
    horizon: Annotated[StrictInt, Field(ge=1, le=2**31)]
    columns: list[Name] | None = Field(None, min_length=1, max_length=MAX_WIDTH)  # a csv series' feature columns
    target_level: Literal["char", "word"] | None = None  # seq2seq: how target text was split


class State(Strict):
    name: Literal["h", "c"]
    output: Literal["h_next", "c_next"]
    shape: tuple[Annotated[StrictInt, Field(ge=1, le=MAX_LAYERS)], Literal["batch"], Count]
    dtype: Literal["float32"]
    initial: Literal["zeros"]


class Graph(Strict):
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
    ir_version: Annotated[StrictInt, Field(ge=1, le=100)]
    inputs: list[Name] = Field(min_length=1, max_length=16)
    outputs: list[Name] = Field(min_length=1, max_length=16)
    bytes: Annotated[StrictInt, Field(ge=1, le=MAX_GRAPH_BYTES)] | None = None  # since 0.2; bounds the read


class DecoderInfo(Strict):
    cell: Literal["rnn", "lstm", "gru"]
    num_layers: Annotated[StrictInt, Field(ge=1, le=MAX_LAYERS)]
    hidden_size: Count


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    cell: Literal["rnn", "lstm", "gru"]
    num_layers: Annotated[StrictInt, Field(ge=1, le=MAX_LAYERS)]
    hidden_size: Count
    bidirectional: StrictBool
    # seq2seq: the decoder (its state is the manifest's `state`) and the attention over the encoder
    decoder: DecoderInfo | None = None
    attention: Literal["none", "additive", "multiplicative"] | None = None
    pool: Literal["last", "mean", "max", "attention"] = "last"  # since 0.3; per-sequence heads only
    frame_stack: Annotated[StrictInt, Field(ge=1, le=MAX_FRAME_STACK)] = 1  # since 0.3; features, per-sequence heads


class Parity(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    passed: StrictBool
    cases: Annotated[StrictInt, Field(ge=0)]
    failed: Annotated[StrictInt, Field(ge=0)]
    worst_case: StrictStr | None = None


class Manifest(Strict):
    format: Literal["rnnkit-bundle"]
    format_version: Literal[1]
    task: Literal[tuple(tasks.TASKS)]
    model: ModelInfo
    input: TokensInput | FeaturesInput = Field(discriminator="kind")
    output: Output
    reader: Reader | None = None  # since 0.2: how the training data was read
    state: list[State] | None = Field(min_length=1, max_length=2)
    precision: Literal["fp32", "int8", "fp16", "bf16"]
    opset: Annotated[StrictInt, Field(ge=7, le=100)]
    graphs: dict[Literal["model.onnx", "step.onnx", "encoder.onnx", "decoder_step.onnx"], Graph]
    producer: dict = Field(default_factory=dict)
    parity: Parity
    source: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def consistent(self):
        if tasks.of(self.task).predicts == "sequences":
            return self._consistent_seq2seq()
        normalize = getattr(self.input, "normalize", "dataset")
        whole = whole_sequences_only(self.model.bidirectional, normalize, self.model.pool)
        if (whole is not None) != (self.state is None):
            raise ValueError(
                "state must be null exactly when the model reads whole sequences only (bidirectional, features "
                "normalised per sequence, outputs pooled over time, or frames stacked)"
            )
        if self.model.frame_stack > 1 and (self.input.kind != "features" or self.output.per_step):
            raise ValueError("model.frame_stack above 1 is for feature inputs and per-sequence outputs only")
        if not {"model.onnx"} <= set(self.graphs) <= {"model.onnx", "step.onnx"}:
            raise ValueError("graphs must be model.onnx, and step.onnx for a model that streams")
        if (self.state is None) == ("step.onnx" in self.graphs):
            raise ValueError("a bundle has step.onnx and a state spec together (a model that streams) or neither")
        columns = self.reader.columns if self.reader is not None else None
        if columns is not None and len(columns) != getattr(self.input, "num_features", None):
            raise ValueError("reader.columns must name each of the input's features (num_features of them)")
        if tasks.of(self.task).predicts == "labels" and not self.output.labels:
            raise ValueError(f"a {self.task} bundle's output needs its labels")
        return self

    def _consistent_seq2seq(self):
        """An encoder-decoder: encoder.onnx and decoder_step.onnx, the decoder's state spec (at its
        width and depth), token ids in and log-probabilities over the target vocabulary out."""
        if set(self.graphs) != {"encoder.onnx", "decoder_step.onnx"}:
            raise ValueError("a seq2seq bundle's graphs are encoder.onnx and decoder_step.onnx")
        if self.input.kind != "tokens" or self.output.name != "logprobs" or self.output.vocab is None:
            raise ValueError("a seq2seq bundle takes tokens and outputs logprobs over its output vocab")
        decoder = self.model.decoder
        if decoder is None or self.model.attention is None or self.state is None:
            raise ValueError("a seq2seq bundle's model names its decoder and attention, and state is the decoder's")
        names = ["h", "c"] if decoder.cell == "lstm" else ["h"]
        if [s.name for s in self.state] != names or any(
            (s.shape[0], s.shape[2]) != (decoder.num_layers, decoder.hidden_size) for s in self.state
        ):
            raise ValueError(
                f"state must be the decoder's {names}, [{decoder.num_layers}, batch, {decoder.hidden_size}]"
            )
        return self


def check(obj) -> None:
    """Raise ValueError naming each field of `obj` (a parsed manifest) that breaks the schema."""
    from pydantic import ValidationError

    try:
        Manifest.model_validate(obj)
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc'])) or 'manifest'}: {err['msg']}" for err in e.errors()[:3]]
        more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
        raise ValueError("; ".join(problems) + more) from None
