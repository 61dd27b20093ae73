"""Every input format parses to the right shapes, ids and specs; real example files included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.core.config import Config, DataConfig, TrainConfig
from toolkit.core.data import (
    PAD_TARGET,
    SequenceDataset,
    StreamDataset,
    build_specs,
    encode_examples,
    encode_stream,
    example_path,
    load_data,
    load_file,
    order_labels,
    order_tags,
    read_records,
    resolve_format,
)
from toolkit.core.data.vocab import EOS_ID, UNK_ID
from toolkit.core.errors import ConfigError, DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def config(task: str, data: Path, val: Path | None = None, **kw) -> Config:
    seed = kw.pop("seed", 0)
    return Config(
        task=task, data=DataConfig(data=str(data), val=str(val) if val else None, **kw), train=TrainConfig(seed=seed)
    )


# ----------------------------------------------------------------------------------------------- jsonl


def test_classify_tokens_jsonl(tmp_path):
    path = jsonl(
        tmp_path / "train.jsonl",
        [
            {"tokens": ["a", "b", "a"], "label": "pos", "id": 7},
            {"tokens": ["c"], "label": "neg"},
            {"tokens": ["a", "d"], "label": 3},
        ],
    )
    records = read_records(path, "classify")
    assert [r.target for r in records] == ["pos", "neg", "3"]
    assert [r.line for r in records] == [1, 2, 3]
    inp, out = build_specs(records)
    assert inp.kind == "tokens" and inp.vocab.tokens[4:] == ["a", "b", "c", "d"]
    assert out.task == "classify" and out.labels == ["3", "neg", "pos"]
    examples = encode_examples(records, inp, out)
    assert examples[0].inputs.dtype == np.int64
    assert examples[0].inputs.tolist() == [4, 5, 4]
    assert [ex.target for ex in examples] == [2, 1, 0]
    assert examples[0].source == f"{path}:1"


def test_classify_features_jsonl_specs(tmp_path):
    path = jsonl(
        tmp_path / "train.jsonl",
        [
            {"features": [[1.0, 10.0], [3.0, 10.0]], "label": 1},
            {"features": [[5, 10]], "label": 2},
        ],
    )
    records = read_records(path, "classify")
    inp, out = build_specs(records)
    assert inp.kind == "features" and inp.num_features == 2 and inp.size == 2
    assert inp.mean == pytest.approx([3.0, 10.0])
    assert inp.std[0] == pytest.approx(np.std([1.0, 3.0, 5.0]))
    assert inp.std[1] == 1.0  # constant feature
    examples = encode_examples(records, inp, out)
    assert examples[0].inputs.dtype == np.float32 and examples[0].inputs.shape == (2, 2)
    assert examples[1].inputs.tolist() == [[5.0, 10.0]]  # raw values: the model normalises


def test_label_and_tag_order():
    assert order_labels(["10", "2", "1"]) == ["1", "2", "10"]
    assert order_labels(["b", "10", "a"]) == ["10", "a", "b"]
    assert order_labels(["1.5", "-2", "1"]) == ["-2", "1", "1.5"]
    assert order_tags(["I-PER", "O", "B-PER"]) == ["O", "B-PER", "I-PER"]
    assert order_tags(["NN", "DT"]) == ["DT", "NN"]


def test_tag_jsonl(tmp_path):
    path = jsonl(
        tmp_path / "t.jsonl",
        [{"tokens": ["John", "runs"], "tags": ["B-PER", "O"]}, {"tokens": ["Mary"], "tags": ["B-PER"]}],
    )
    records = read_records(path, "tag")
    inp, out = build_specs(records)
    assert out.labels == ["O", "B-PER"]
    examples = encode_examples(records, inp, out)
    assert examples[0].target.dtype == np.int64 and examples[0].target.tolist() == [1, 0]


def test_tag_features_jsonl(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"features": [[1.0], [2.0], [3.0]], "tags": ["x", "y", "x"]}])
    records = read_records(path, "tag")
    inp, out = build_specs(records)
    assert inp.kind == "features" and out.labels == ["x", "y"]
    assert encode_examples(records, inp, out)[0].target.tolist() == [0, 1, 0]


def test_regress_jsonl_per_sequence(tmp_path):
    path = jsonl(
        tmp_path / "r.jsonl",
        [{"features": [[1.0], [2.0]], "target": 1.5}, {"features": [[0.0]], "target": 3.5}],
    )
    records = read_records(path, "regress")
    inp, out = build_specs(records)
    assert out.task == "regress" and out.num_targets == 1 and out.per_step is False
    assert out.target_mean == pytest.approx([2.5]) and out.target_std == pytest.approx([1.0])
    examples = encode_examples(records, inp, out)
    assert examples[0].target.dtype == np.float32 and examples[0].target.tolist() == [1.5]


def test_regress_jsonl_vector_and_per_step(tmp_path):
    vec = jsonl(
        tmp_path / "v.jsonl", [{"tokens": ["a"], "target": [1, 2, 3]}, {"tokens": ["b", "c"], "target": [0, 0, 0]}]
    )
    inp, out = build_specs(read_records(vec, "regress"))
    assert inp.kind == "tokens" and out.num_targets == 3 and not out.per_step
    step = jsonl(
        tmp_path / "s.jsonl",
        [
            {"features": [[1.0], [2.0]], "target": [[1.0, 2.0], [3.0, 4.0]]},
            {"features": [[1.0]], "target": [[5.0, 6.0]]},
        ],
    )
    records = read_records(step, "regress")
    inp, out = build_specs(records)
    assert out.per_step is True and out.num_targets == 2
    assert out.target_mean == pytest.approx([3.0, 4.0])
    ex = encode_examples(records, inp, out)
    assert ex[0].target.shape == (2, 2) and ex[1].target.shape == (1, 2)


def test_unlabeled_input_for_inference(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [{"tokens": ["a", "b"], "label": "x"}, {"tokens": ["b"], "label": "y"}])
    inp, out = build_specs(read_records(train, "classify"))
    new = jsonl(tmp_path / "new.jsonl", [{"tokens": ["a", "zzz", "qq"]}, {"tokens": ["b"], "label": "y"}])
    records = read_records(new, "classify", require_target=False)
    encoded = encode_examples(records, inp, out)
    assert encoded[0].target is None and encoded[1].target == 1
    assert encoded[0].inputs.tolist() == [5, UNK_ID, UNK_ID]  # "b" (2 uses) ranks before "a"
    assert encoded.unknown_tokens == 2 and encoded.total_tokens == 4
    assert encoded.unknown_rate == pytest.approx(0.5)


def test_lowercase_tokens(tmp_path):
    path = jsonl(tmp_path / "a.jsonl", [{"tokens": ["The", "the"], "label": "x"}])
    records = read_records(path, "classify", lowercase=True)
    assert records[0].tokens == ["the", "the"]


# ----------------------------------------------------------------------------------------------- conll


def test_conll(tmp_path):
    path = write(
        tmp_path / "ner.conll",
        "-DOCSTART- -X- -X- O\n\n# sent 1\nEU NNP B-ORG\nrejects VBZ O\n# NN O\n\n\nPeter NNP B-PER\n",
    )
    records = read_records(path, "tag")
    assert len(records) == 2
    assert records[0].tokens == ["EU", "rejects", "#"]  # "#" inside a sentence is a token
    assert records[0].target == ["B-ORG", "O", "O"]
    assert records[0].line == 4 and records[1].line == 9
    inp, out = build_specs(records)
    assert out.labels == ["O", "B-ORG", "B-PER"]
    assert encode_examples(records, inp, out)[1].target.tolist() == [2]


def test_conll_tokens_only_for_inference(tmp_path):
    path = write(tmp_path / "raw.bio", "John\nruns\n\nMary\n")
    records = read_records(path, "tag", require_target=False)
    assert [r.tokens for r in records] == [["John", "runs"], ["Mary"]]
    assert all(r.target is None for r in records)


# ----------------------------------------------------------------------------------------------- text


def test_text_char_level(tmp_path):
    path = write(tmp_path / "a.txt", "ab\r\nc")
    records = read_records(path, "lm")
    assert records[0].tokens == ["a", "b", "\n", "c", "<eos>"]
    inp, out = build_specs(records)
    assert out.task == "lm"
    stream = encode_stream(records, inp, out)
    ids = inp.vocab.encode(["a", "b", "\n", "c"]).tolist() + [EOS_ID]
    assert stream.inputs.tolist() == ids[:-1] and stream.targets.tolist() == ids[1:]


def test_text_word_level_directory(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    write(d / "b.md", "Hello World\n\n  \nagain\n")
    write(d / "sub" / "a.txt", "x y\n")
    write(d / "ignored.csv", "not,text\n")
    records = read_records(d, "lm", level="word", lowercase=True)
    assert [Path(r.path).name for r in records] == ["b.md", "a.txt"]  # sorted by path: "b.md" < "sub/a.txt"
    assert records[0].tokens == ["hello", "world", "<eos>", "again", "<eos>"]
    assert records[1].tokens == ["x", "y", "<eos>"]
    assert resolve_format(d) == "text"


def test_a_literal_pad_token_in_the_data_is_unknown_not_padding(tmp_path):
    """ "<pad>" written in a file is text, not padding: it becomes <unk> (id 0 would read the
    embedding's zero, never-trained padding row); a literal <unk> or <eos> keeps its meaning."""
    path = write(tmp_path / "a.txt", "a <pad> b <unk> c <eos> a\n")
    records = read_records(path, "lm", level="word")
    inp, out = build_specs(records)
    stream = encode_stream(records, inp, out)
    ids = np.append(stream.inputs, stream.targets[-1]).tolist()
    print(records[0].tokens, ids)
    assert "<pad>" not in inp.vocab.tokens[4:]
    assert ids[1] == UNK_ID and ids[3] == UNK_ID and ids[5] == EOS_ID and 0 not in ids
    assert inp.vocab.count_unknown(["<pad>", "a"]) == 1


def test_text_inference_stream_keeps_every_position(tmp_path):
    path = write(tmp_path / "a.txt", "abc")
    records = read_records(path, "lm")
    inp, out = build_specs(records)
    stream = encode_stream(records, inp, out, require_target=False)
    assert len(stream) == 4 and stream.targets[-1] == PAD_TARGET


def test_shakespeare_play():
    play = example_path("macbeth.md")
    assert play.name == "macbeth.md" and example_path("shakespeare").is_dir()
    records = read_records(play, "lm", level="word")
    tokens = records[0].tokens
    assert tokens[:2] == ["#", "Macbeth"] and tokens[-1] == "<eos>"
    assert "Witch**" in tokens[:30]
    cfg = config("lm", play, level="char")
    prepared = load_data(cfg)
    assert isinstance(prepared.train, StreamDataset) and isinstance(prepared.val, StreamDataset)
    n = len(prepared.train) + len(prepared.val)
    assert len(prepared.val) == pytest.approx(0.1 * n, rel=0.01)
    assert 40 < len(prepared.input.vocab) < 120  # characters of English text
    assert any("held out the last" in note for note in prepared.notes)


# ----------------------------------------------------------------------------------------------- csv


def test_csv_series(tmp_path):
    path = write(tmp_path / "s.csv", ",date,a,b\n0,2020-01,1,10\n1,2020-02,2,20\n2,2020-03,3,30\n3,2020-04,4,40\n")
    records = read_records(path, "regress")
    assert records[0].columns == ["a", "b"] and records[0].features.shape == (4, 2)
    assert any("'date'" in n for n in records.notes) and any("unnamed" in n for n in records.notes)
    inp, out = build_specs(records, target_columns=["b"], horizon=2)
    assert inp.num_features == 2 and out.num_targets == 1 and out.per_step
    stream = encode_stream(records, inp, out, target_columns=["b"], horizon=2)
    assert stream.inputs.tolist() == [[1, 10], [2, 20]]
    assert stream.targets.tolist() == [[30], [40]]
    assert stream.inputs.dtype == np.float32 and stream.targets.dtype == np.float32
    default = encode_stream(records, *build_specs(records), horizon=1)
    assert default.targets.shape == (3, 2)
    unlabeled = encode_stream(records, inp, out, target_columns=["b"], horizon=2, require_target=False)
    assert len(unlabeled) == 4 and np.isnan(unlabeled.targets[-1]).all()


def test_airline_csv():
    path = example_path("Airline.csv")
    prepared = load_data(config("regress", path, val_fraction=0.25))
    assert len(prepared.train) + len(prepared.val) == 144 - 2  # one pair lost per part
    assert prepared.input.num_features == 1 and prepared.output.num_targets == 1
    assert any("Date" in n and "Airline.csv" in n for n in prepared.notes)
    assert prepared.train.inputs[0, 0] == 112 and prepared.train.targets[0, 0] == 118
    assert prepared.output.target_mean[0] > 200


def test_daphnet_and_uschange_csv():
    records = read_records(example_path("S06R02E0.csv"), "regress")
    assert records[0].features.shape[1] == 10 and "timestamp" in records.skipped_columns
    records = read_records(example_path("Uschange.csv"), "regress")
    assert records[0].columns == ["Consumption", "Income", "Production", "Savings", "Unemployment"]


# ----------------------------------------------------------------------------------------------- ts


TS_HEADER = "# comment\n@problemName Toy\n@timeStamps false\n@univariate false\n@dimensions 2\n"


def test_ts_classify(tmp_path):
    path = write(tmp_path / "toy.ts", TS_HEADER + "@classLabel true b a\n@data\n1,2,3:4,5,6:a\n7,8:9,10:b\n")
    records = read_records(path, "classify")
    assert records.labels == ["b", "a"]
    assert records[0].features.tolist() == [[1, 4], [2, 5], [3, 6]]
    assert records[0].line == 8
    inp, out = build_specs(records)
    assert out.labels == ["b", "a"]  # the declared order, not sorted
    assert [ex.target for ex in encode_examples(records, inp, out)] == [1, 0]


def test_ts_regress_and_nan_padding(tmp_path):
    path = write(
        tmp_path / "r.ts", "@problemName R\n@univariate true\n@targetLabel true\n@data\n1,2,NaN,NaN:0.5\n3:1.5\n"
    )
    records = read_records(path, "regress")
    assert records[0].features.shape == (2, 1)  # trailing NaN padding dropped
    assert records[1].target.tolist() == [1.5]
    _, out = build_specs(records)
    assert out.num_targets == 1 and not out.per_step


def test_ts_unlabeled_for_inference(tmp_path):
    path = write(tmp_path / "u.ts", TS_HEADER + "@classLabel true a b\n@data\n1,2:3,4\n")
    records = read_records(path, "classify", require_target=False)
    assert records[0].target is None and records[0].features.shape == (2, 2)


def test_japanese_vowels():
    records = read_records(example_path("JapaneseVowels_TRAIN.ts"), "classify")
    assert len(records) == 270
    assert {r.features.shape[1] for r in records} == {12}
    lengths = [len(r) for r in records]
    assert min(lengths) == 7 and max(lengths) <= 29
    assert records.labels == [str(i) for i in range(1, 10)]
    test = read_records(example_path("JapaneseVowels_TEST.ts"), "classify")
    assert len(test) == 370 and max(len(r) for r in test) == 29
    cfg = config("classify", example_path("JapaneseVowels_TRAIN.ts"), val=example_path("JapaneseVowels_TEST.ts"))
    prepared = load_data(cfg)
    assert prepared.input.num_features == 12 and len(prepared.input.mean) == 12
    assert prepared.output.labels == [str(i) for i in range(1, 10)]
    assert len(prepared.train) == 270 and len(prepared.val) == 370


def test_gunpoint_and_basic_motions():
    train = read_records(example_path("GunPoint_TRAIN.ts"), "classify")
    test = read_records(example_path("GunPoint_TEST.ts"), "classify")
    assert len(train) == 50 and len(test) == 150
    assert {r.features.shape for r in train} == {(150, 1)} and train.labels == ["1", "2"]
    motions = read_records(example_path("BasicMotions_TRAIN.ts"), "classify")
    assert motions[0].features.shape == (100, 6)
    assert motions.labels == ["Standing", "Running", "Walking", "Badminton"]
    covid = read_records(example_path("Covid3Month_TRAIN.ts"), "regress")  # lower-case header keys
    assert covid[0].target.shape == (1,)


# ----------------------------------------------------------------------------------------------- load_data


def test_load_data_holds_out_seeded_split(tmp_path):
    rows = [{"tokens": [f"w{i}", "common"], "label": "ab"[i % 2]} for i in range(20)]
    path = jsonl(tmp_path / "train.jsonl", rows)
    a = load_data(config("classify", path, seed=3))
    b = load_data(config("classify", path, seed=3))
    c = load_data(config("classify", path, seed=4))
    assert isinstance(a.train, SequenceDataset) and len(a.train) == 18 and len(a.val) == 2
    assert [e.source for e in a.val.examples] == [e.source for e in b.val.examples]
    assert [e.source for e in a.val.examples] != [e.source for e in c.val.examples]
    # the vocabulary comes from the training split only: held-out words are <unk>
    assert all(UNK_ID in e.inputs.tolist() for e in a.val.examples)
    assert len(a.input.vocab) == 4 + 18 + 1
    assert any("held out 2 of 20 sequences" in n for n in a.notes)
    assert a.output.labels == ["a", "b"]


def test_load_data_val_fraction_edge_cases(tmp_path):
    path = jsonl(tmp_path / "two.jsonl", [{"tokens": ["a"], "label": "x"}, {"tokens": ["b"], "label": "y"}])
    prepared = load_data(config("classify", path, val_fraction=0.01))
    assert len(prepared.train) == 1 and len(prepared.val) == 1  # at least one held out
    # a label seen only in the held-out part is still a known class
    assert prepared.output.labels == ["x", "y"]
    none = load_data(config("classify", path, val_fraction=0.0))
    assert none.val is None and any("no validation data" in n for n in none.notes)


def test_load_data_val_file_and_min_freq(tmp_path):
    train = jsonl(
        tmp_path / "train.jsonl", [{"tokens": ["a", "a", "b"], "label": "x"}, {"tokens": ["a"], "label": "y"}]
    )
    val = jsonl(tmp_path / "val.jsonl", [{"tokens": ["a", "b", "c"], "label": "y"}])
    prepared = load_data(config("classify", train, val=val, min_freq=2))
    assert prepared.input.vocab.tokens[4:] == ["a"]
    assert prepared.val.examples[0].inputs.tolist() == [4, UNK_ID, UNK_ID]
    assert any("2 of 3 validation tokens" in n for n in prepared.notes)


def test_load_file_for_inference(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [{"tokens": ["a"], "label": "x"}, {"tokens": ["b"], "label": "y"}])
    cfg = config("classify", train, val_fraction=0.0)
    prepared = load_data(cfg)
    new = jsonl(tmp_path / "new.jsonl", [{"tokens": ["b", "a"]}])
    data = load_file(new, cfg, prepared.input, prepared.output, require_target=False)
    assert data.examples[0].inputs.tolist() == [5, 4] and data.examples[0].target is None


def test_resolve_format():
    assert resolve_format("x.JSONL") == "jsonl" and resolve_format("x.json") == "jsonl"
    assert resolve_format("x.iob") == "conll" and resolve_format("x.ts") == "ts"
    assert resolve_format("x.csv", task="regress") == "csv"
    assert resolve_format("x.dat", "jsonl", task="classify") == "jsonl"
    with pytest.raises(ConfigError, match="task lm cannot read csv"):
        resolve_format("x.csv", task="lm")
    with pytest.raises(ConfigError, match="data.format"):
        resolve_format("x.csv", fmt="parquet")


def test_example_path_unknown_name():
    with pytest.raises(DataError, match="no example file named 'Nope.ts'"):
        example_path("Nope.ts")
