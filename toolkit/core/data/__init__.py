"""Data: readers for every input format, encoding with a vocabulary / label set, and batching.

NumPy and the standard library only (no torch): the inference runtime reuses all of it.
Formats are described in docs/data-formats.md.
"""

from toolkit.core.data.batching import bucket_batches, pad_batch, stream_windows
from toolkit.core.data.encode import (
    Encoded,
    build_specs,
    encode_examples,
    encode_stream,
    label_universe,
    order_labels,
    order_tags,
)
from toolkit.core.data.examples import example_path
from toolkit.core.data.formats import SUFFIX_FORMATS, read_records, resolve_format
from toolkit.core.data.load import encode_records, load_data, load_file, validation_data
from toolkit.core.data.records import Record, Records
from toolkit.core.data.split import split_sequences, split_stream
from toolkit.core.data.text import tokenize
from toolkit.core.data.types import (
    PAD_TARGET,
    Batch,
    Example,
    InputSpec,
    OutputSpec,
    Prepared,
    SequenceDataset,
    StreamDataset,
)
from toolkit.core.data.vocab import Vocabulary

__all__ = [
    "PAD_TARGET",
    "SUFFIX_FORMATS",
    "Batch",
    "Encoded",
    "Example",
    "InputSpec",
    "OutputSpec",
    "Prepared",
    "Record",
    "Records",
    "SequenceDataset",
    "StreamDataset",
    "Vocabulary",
    "bucket_batches",
    "build_specs",
    "encode_examples",
    "encode_records",
    "encode_stream",
    "example_path",
    "label_universe",
    "load_data",
    "load_file",
    "validation_data",
    "order_labels",
    "order_tags",
    "pad_batch",
    "read_records",
    "resolve_format",
    "split_sequences",
    "split_stream",
    "stream_windows",
    "tokenize",
]
