"""`rnnkit deploy triton`: the repository's configs parse back, describe their graphs exactly, and
the Triton variant of the step graph is certified against step.onnx (and fails when it is wrong).
The repository is run in a real Triton server by tests/test_triton_server.py (`make triton-test`)."""

from __future__ import annotations

import json

import onnx
import pytest

from tests import helpers
from toolkit.triton import config as triton_config
from toolkit.triton.graph import batch_first_step
from toolkit.triton.repository import certify

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the dev extra) is not installed")

SPECS = [  # (name, task, cell, bidirectional)
    ("lstm_classify", "classify", "lstm", False),
    ("gru_lm", "lm", "gru", False),
    ("rnn_regress_step", "regress-step", "rnn", False),
    ("gru_bi_tag", "tag", "gru", True),
    ("lstm_bi_regress", "regress", "lstm", True),
]


@pytest.fixture(scope="module")
def repositories(tmp_path_factory):
    """One repository per bundle, written through the CLI."""
    made = {}
    for name, task, cell, bi in SPECS:
        d = tmp_path_factory.mktemp(name)
        bundle = helpers.exported_bundles(tmp_path_factory, cell, [(name, task, bi)])[name]
        result = helpers.in_process(["deploy", "triton", bundle, "--out", d / "repo", "--name", name, "--json"])
        assert result.returncode == 0, result.stderr
        made[name] = (bundle, d / "repo", json.loads(result.stdout))
    return made


def _read(repo, model):
    return triton_config.parse((repo / model / "config.pbtxt").read_text())


def _io(config):
    def entry(e):
        return (e.name, e.data_type, list(e.dims))

    return [entry(e) for e in config.input], [entry(e) for e in config.output]


@pytest.mark.parametrize("name", [s[0] for s in SPECS])
def test_configs_parse_back_and_match_their_graphs(repositories, name):
    bundle, repo, printed = repositories[name]
    manifest = json.loads((bundle / "manifest.json").read_text())
    streams = manifest["state"] is not None
    assert printed["models"] == {name: "onnxruntime", f"{name}_python": "python"}
    ort_config, python_config = _read(repo, name), _read(repo, f"{name}_python")
    graph = onnx.load(repo / name / "1" / "model.onnx")
    problems = triton_config.check_against_graph(ort_config, graph)
    print(f"{name}: {len(ort_config.input)} inputs, {len(ort_config.sequence_batching.state)} states; {problems}")
    assert problems == []
    assert ort_config.backend == "onnxruntime" and python_config.backend == "python"
    # the two models are interchangeable for a client: same inputs (less `lengths`) and outputs
    ort_in, ort_out = _io(ort_config)
    assert _io(python_config) == ([i for i in ort_in if i[0] != "lengths"], ort_out)
    assert python_config.input[0].allow_ragged_batch  # requests of different lengths share an execute()
    if streams:
        states = {(s.input_name, s.output_name, tuple(s.dims)) for s in ort_config.sequence_batching.state}
        want = {(s["name"], s["output"], (s["shape"][0], s["shape"][2])) for s in manifest["state"]}
        assert states == want
        assert all(s.initial_state[0].zero_data for s in ort_config.sequence_batching.state)
        controls = [c.name for c in python_config.sequence_batching.control_input]
        assert controls == ["START", "END", "READY", "CORRID"]
        assert python_config.sequence_batching.oldest.max_candidate_sequences == 1024
        assert (repo / f"{name}_python" / "1" / "step.onnx").read_bytes() == (bundle / "step.onnx").read_bytes()
    else:
        assert ort_config.HasField("dynamic_batching") and not ort_config.HasField("sequence_batching")
        assert (repo / name / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    names = manifest["output"].get("labels") or (manifest["input"]["vocab"] if manifest["task"] == "lm" else None)
    if names:
        lines = (repo / name / "labels.txt").read_text().split("\n")[:-1]
        assert lines == [n.replace("\n", "\\n") for n in names]
    else:
        assert not (repo / name / "labels.txt").exists() and not ort_config.output[0].label_filename


@pytest.mark.parametrize("name", [s[0] for s in SPECS if not s[3]])
def test_the_triton_step_graph_is_certified_against_step_onnx(repositories, name):
    bundle, repo, printed = repositories[name]
    cert = printed["certificate"]
    for case in cert["cases"]:
        print(f"{name}: {case['name']}: max abs {case['max_abs']:.3g} (budget {case['budget']:.3g})")
    assert cert["passed"] and len(cert["cases"]) == 5
    assert json.loads((repo / "rnnkit-triton.json").read_text())["certificate"] == cert


def _broken(variant: onnx.ModelProto, how: str) -> bytes:
    for node in variant.graph.node:
        if how == "START ignored" and node.op_type == "Mul":
            node.input[1] = "__one"
        if how == "READY ignored" and node.op_type == "Where":
            node.input[2] = node.input[1]
        if how == "state not transposed" and node.op_type == "Transpose" and node.output[0].startswith("__h_next"):
            node.attribute[0].ints[:] = [0, 1, 2]
    return variant.SerializeToString()


@pytest.mark.parametrize("how", ["START ignored", "READY ignored", "state not transposed"])
def test_a_wrong_step_graph_fails_its_certificate(repositories, how):
    bundle = repositories["lstm_classify"][0]
    manifest = json.loads((bundle / "manifest.json").read_text())
    step = (bundle / "step.onnx").read_bytes()
    bad = _broken(batch_first_step(onnx.load_from_string(step), manifest["state"]), how)
    try:
        cert = certify(step, bad, manifest)
    except Exception as e:  # a transpose left out cannot even run on a batch != layers
        print(f"{how}: refused by ONNX Runtime: {type(e).__name__}")
        return
    print(f"{how}: {cert['worst']}")
    assert not cert["passed"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.sequence_batching.state[0].dims.__setitem__(1, 25), "dims [2, 25]"),
        (lambda c: setattr(c.input[0], "data_type", 8), "TYPE_INT32"),
        (lambda c: setattr(c.input[0], "name", "features"), "'features' is not in the graph"),
        (lambda c: c.output[0].dims.__setitem__(1, 4), "config dims [-1, 4]"),
        (lambda c: c.sequence_batching.control_input[0].__setattr__("name", "BEGIN"), "'START' of the graph"),
        (lambda c: c.sequence_batching.state.pop(), "'c_next' of the graph is not in the config"),
    ],
    ids=["state dims", "dtype", "input name", "output dims", "control name", "state missing"],
)
def test_a_config_that_does_not_match_its_graph_is_caught(repositories, mutate, expected):
    _, repo, _ = repositories["lstm_classify"]
    config = _read(repo, "lstm_classify")
    mutate(config)
    problems = triton_config.check_against_graph(config, onnx.load(repo / "lstm_classify" / "1" / "model.onnx"))
    print(problems)
    assert any(expected in p for p in problems)


def test_a_misspelt_config_field_does_not_parse(repositories):
    from google.protobuf.text_format import ParseError

    _, repo, _ = repositories["gru_lm"]
    text = (repo / "gru_lm" / "config.pbtxt").read_text().replace("max_candidate_sequences", "max_candidate_sequence")
    with pytest.raises(ParseError, match="max_candidate_sequence"):
        triton_config.parse(text)


def test_deploy_refuses_bad_names_foreign_directories_and_failed_bundles(repositories, tmp_path):
    bundle, repo, _ = repositories["gru_lm"]
    bad_name = helpers.in_process(["deploy", "triton", bundle, "--out", tmp_path / "r", "--name", "my model"])
    print(bad_name.stderr)
    assert bad_name.returncode == 2 and "--name 'my model'" in bad_name.stderr and not (tmp_path / "r").exists()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    refused = helpers.in_process(["deploy", "triton", bundle, "--out", foreign])
    print(refused.stderr)
    assert refused.returncode == 2 and "not a repository written by" in refused.stderr
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]
    # a failed bundle (its manifest says so) is refused unless --allow-unverified
    failed = tmp_path / "failed"
    failed.mkdir()
    for f in bundle.iterdir():
        (failed / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((failed / "manifest.json").read_text())
    manifest["parity"]["passed"] = False
    (failed / "manifest.json").write_text(json.dumps(manifest))
    unverified = helpers.in_process(["deploy", "triton", failed, "--out", tmp_path / "r"])
    assert unverified.returncode == 2 and "--allow-unverified" in unverified.stderr, unverified.stderr
    # writing again over a repository written before replaces it whole
    again = helpers.in_process(["deploy", "triton", bundle, "--out", repo, "--name", "other"])
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["other", "other_python", "rnnkit-triton.json"]


def test_deploy_triton_imports_neither_torch_nor_mlflow(repositories, tmp_path):
    bundle = repositories["rnn_regress_step"][0]
    assert helpers.heavy_modules_after(["deploy", "triton", str(bundle), "--out", str(tmp_path / "r")]) == []
