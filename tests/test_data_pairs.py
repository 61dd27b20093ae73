"""Sequence pairs for seq2seq (toolkit.core.data.pairs) and the CMUdict grapheme-to-phoneme split."""

from __future__ import annotations

import pytest

from toolkit.core.data.pairs import read_pairs
from toolkit.core.errors import DataError


def test_jsonl_and_tsv_pairs_with_their_own_levels(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        '{"source": "Cat", "target": "K AE T", "id": 7}\n\n{"source": ["c", "o", "t"], "target": ["K", "AA", "T"]}\n',
        encoding="utf-8",
    )
    records = read_pairs(str(jsonl), "jsonl", level="char", target_level="word", lowercase=True)
    assert [(r.tokens, r.target, r.line) for r in records] == [
        (["c", "a", "t"], ["k", "ae", "t"], 1),
        (["c", "o", "t"], ["k", "aa", "t"], 3),
    ]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("the cat\tle chat\r\nhello\n", encoding="utf-8")
    pairs = read_pairs(str(tsv), "tsv", require_target=False, level="word", target_level="char")
    assert [(r.tokens, r.target) for r in pairs] == [(["the", "cat"], list("le chat")), (["hello"], None)]


@pytest.mark.parametrize(
    "fmt, line, message",
    [
        ("jsonl", '{"source": "a", "target": "b", "lang": "en"}', "unknown field 'lang'"),
        ("jsonl", '{"target": "b"}', "missing field 'source'"),
        ("jsonl", '{"source": "a"}', "missing the field 'target'"),
        ("jsonl", '{"source": "", "target": "b"}', "empty source"),
        ("jsonl", '{"source": "a", "target": "   "}', "empty target"),
        ("jsonl", '{"source": ["a", 3], "target": "b"}', "item 2 is 3"),
        ("jsonl", '{"source": 5, "target": "b"}', "got a JSON number"),
        ("jsonl", '["a", "b"]', "got a JSON array"),
        ("jsonl", '{"source": "a", "target": "b"', "not valid JSON"),
        ("tsv", "a\tb\tc", "3 tab-separated columns"),
        ("tsv", "only a source", "missing the target after a tab"),
    ],
)
def test_bad_pairs_are_refused_with_file_and_line(tmp_path, fmt, line, message):
    path = tmp_path / f"bad.{fmt}"
    path.write_text(("a\tb\n" if fmt == "tsv" else '{"source": "a", "target": "b"}\n') + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as refused:
        read_pairs(str(path), fmt, level="char", target_level="word")
    print(refused.value)
    assert message in str(refused.value) and f"{path}:2" in str(refused.value)


def test_an_empty_file_and_a_bad_level_are_refused(tmp_path):
    empty = tmp_path / "e.tsv"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no pairs"):
        read_pairs(str(empty), "tsv")
    with pytest.raises(DataError, match="data.target_level must be one of char, word"):
        read_pairs(str(empty), "tsv", target_level="phoneme")


def test_the_cmudict_split_is_fixed_disjoint_and_without_stress(tmp_path):
    from toolkit.core.data.examples import cmudict_entries, write_g2p_split

    first = write_g2p_split(tmp_path / "a", seed=0)
    again = write_g2p_split(tmp_path / "b", seed=0)
    words = {}
    for name, path in first.items():
        assert path.read_bytes() == again[name].read_bytes()  # the same split every time
        records = read_pairs(str(path), "tsv", level="char", target_level="word")
        words[name] = {"".join(r.tokens) for r in records}
        print(f"{name}: {len(records)} words")
    total = len(cmudict_entries())
    assert sum(map(len, words.values())) == total
    assert not (words["train"] & words["val"]) and not (words["train"] & words["test"])
    assert abs(len(words["test"]) - 0.05 * total) <= 1
    phones = {p for _, ps in cmudict_entries() for p in ps}
    assert len(phones) == 39 and not any(ch.isdigit() for p in phones for ch in p)
