"""Generation from an lm bundle: the ONNX runtime draws the same text as the torch model for a
seed; `rnnkit generate` runs it end to end; misuse is a clear error."""

from __future__ import annotations

import json

import pytest

from tests.helpers import heavy_modules_after, rnnkit, trained_run
from toolkit.core.sampling import Sampling
from toolkit.export.exporter import export
from toolkit.models.generate import generate as torch_generate
from toolkit.runtime.engine import Engine
from toolkit.runtime.generate import GenerateError, generate, text_joiner
from toolkit.train.checkpoint import load_model


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    run = trained_run(tmp, "lm")
    export(run, tmp / "bundle", seed=0)
    return run, tmp / "bundle"


SETTINGS = [
    {"temperature": 0.0},
    {"temperature": 1.0, "seed": 1},
    {"temperature": 0.8, "top_k": 3, "seed": 2},
    {"temperature": 1.2, "top_p": 0.9, "seed": 3},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("prompt", ["", "the c"])
def test_runtime_draws_the_same_text_as_torch(lm, settings, prompt):
    run, bundle = lm
    model, config, input_spec, _ = load_model(run)
    sampling = Sampling(max_tokens=60, **settings)
    want = torch_generate(model, input_spec.vocab, config.data.level, prompt=prompt, sampling=sampling)
    engine = Engine(bundle, device="cpu")
    got = text_joiner(engine.manifest).join(generate(engine, prompt, sampling))
    print(f"{settings} prompt {prompt!r}: {got!r}")
    assert got == want
    assert len(got) > 0


def test_generate_command(lm):
    _, bundle = lm
    args = ["generate", bundle, "--prompt", "we ", "--max-tokens", "40", "--temperature", "0.7", "--seed", "5"]
    text = rnnkit(*args, "--device", "cpu")
    assert text.returncode == 0, text.stderr
    as_json = rnnkit(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    print(result)
    engine = Engine(bundle, device="cpu")
    expected = "".join(generate(engine, "we ", Sampling(max_tokens=40, temperature=0.7, seed=5)))
    assert text.stdout == expected + "\n" and result["text"] == expected
    assert 0 < result["tokens"] <= 40 and result["stop"] in ("eos", "max_tokens")
    assert "<pad>" not in expected and "<bos>" not in expected
    assert rnnkit(*args).stdout == text.stdout  # a seed gives the same text every time
    assert heavy_modules_after(["generate", bundle, "--max-tokens", "5"]) == []


def test_generation_misuse_is_a_clear_error(lm, tmp_path):
    run, bundle = lm
    bad = rnnkit("generate", bundle, "--top-p", "1.5")
    assert bad.returncode == 2 and "--top-p" in bad.stderr
    export(trained_run(tmp_path, "classify"), tmp_path / "bundle", seed=0)
    refused = rnnkit("generate", tmp_path / "bundle")
    print(refused.stderr)
    assert refused.returncode == 2 and "needs a language model (task lm)" in refused.stderr
    with pytest.raises(GenerateError, match="temperature"):
        next(generate(Engine(bundle, device="cpu"), sampling=Sampling(temperature=-1)))
