"""The encoder-decoder (task seq2seq): every encoder cell x direction x attention trains and its
loss falls; stepping the decoder one token at a time computes what teacher forcing computes;
padding and batching change nothing; the run directory round-trips; the CLI trains one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import helpers
from toolkit.core.config import Config, ModelConfig
from toolkit.core.data.types import InputSpec, OutputSpec
from toolkit.core.data.vocab import BOS_ID, EOS_ID, Vocabulary
from toolkit.core.search import Search
from toolkit.models.seq2seq import Seq2SeqModel, translate

SOURCE = Vocabulary.build([list("abcdef")])
TARGET = Vocabulary.build([["A", "B", "C", "D", "E", "F"]])


def reverse_pairs(path, n=240, seed=0):
    """Source letters -> the reversed letters in upper case as words: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        src = "".join(rng.choice(list("abcdef"), size=rng.integers(2, 7)))
        rows.append({"source": src, "target": " ".join(c.upper() for c in src[::-1])})
    return helpers.write_jsonl(path, rows)


def config(tmp_path, cell="lstm", bidirectional=False, attention="none", epochs=4, **model) -> Config:
    cfg = Config(task="seq2seq")
    cfg.data.data = reverse_pairs(tmp_path / "pairs.jsonl")
    cfg.data.target_level = "word"
    cfg.data.val_fraction = 0.15
    cfg.model.cell, cfg.model.bidirectional, cfg.model.attention = cell, bidirectional, attention
    cfg.model.hidden_size, cfg.model.embedding_dim = 24, 12
    for key, value in model.items():
        setattr(cfg.model, key, value)
    cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.train.device = epochs, 0.02, 16, "cpu"
    cfg.train.out = str(tmp_path / "run")
    return cfg


@pytest.mark.parametrize("attention", ["none", "additive", "multiplicative"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_encoder_cell_direction_and_attention_trains_and_is_certified(tmp_path, cell, bidirectional, attention):
    """Its loss falls, and its export (encoder.onnx + decoder_step.onnx) passes the certificate."""
    from toolkit.export.exporter import export
    from toolkit.train.loop import train

    result = train(config(tmp_path, cell, bidirectional, attention), progress=False, log=lambda m: None)
    first, last = result.history[0], result.history[-1]
    exported = export(tmp_path / "run", tmp_path / "bundle", seed=0)
    summary = exported.report.summary()
    decoded = [c for c in exported.report.cases if hasattr(c, "identical")]
    print(
        f"{cell} {'bi' if bidirectional else 'uni'} {attention}: train loss {first['train_loss']:.3f} -> "
        f"{last['train_loss']:.3f}; val error_rate {last['val_error_rate']:.3f}, exact {last['val_exact_match']:.2f}; "
        f"certificate {summary['cases'] - summary['failed']}/{summary['cases']}, worst margin "
        f"{summary['worst_margin']:.3f}; decoded identical {[c.identical for c in decoded]}, "
        f"near-ties {[len(c.near_ties) for c in decoded]}"
    )
    assert last["train_loss"] < 0.8 * first["train_loss"]
    assert result.monitor == "val_error_rate" and last["val_error_rate"] >= 0
    assert exported.written and exported.report.passed, [f"{c.name}: {c.reason}" for c in exported.report.failures]


def tiny(attention="additive", cell="lstm", bidirectional=True, **kw) -> Seq2SeqModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        cell=cell, hidden_size=8, embedding_dim=6, num_layers=2, bidirectional=bidirectional, attention=attention, **kw
    )
    model = Seq2SeqModel(cfg, InputSpec("tokens", vocab=SOURCE), OutputSpec("seq2seq", target_vocab=TARGET))
    return model.double().eval()


@pytest.mark.parametrize(
    "kw",
    [
        {"attention": "none", "bidirectional": False},  # the state itself is the decoder's s_0
        {"attention": "additive"},
        {"attention": "multiplicative", "decoder_cell": "gru", "decoder_layers": 1},
    ],
    ids=["none-copy", "additive-bridge", "multiplicative-gru-decoder"],
)
def test_stepping_the_decoder_computes_what_teacher_forcing_computes(kw):
    """What the search (and later the ONNX decoder step) does, one token at a time, equals the
    teacher-forced pass in float64; and a source padded in a batch equals it alone."""
    model = tiny(**kw)
    assert model.copy_state == (kw.get("attention") == "none")
    rng = np.random.default_rng(0)
    sources = [rng.integers(4, len(SOURCE), n) for n in (5, 2, 7)]
    targets = [np.append(rng.integers(4, len(TARGET), n), EOS_ID) for n in (3, 6, 1)]
    ids, lengths = helpers_pad(sources)
    tgt, _ = helpers_pad(targets, fill=-100)
    with torch.no_grad():
        forced, _ = model(torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(tgt))
        worst = 0.0
        for b, (src, target) in enumerate(zip(sources, targets, strict=True)):
            memory, mask, state = model.encode(torch.from_numpy(src)[None], None)
            previous = BOS_ID
            for t, token in enumerate(target):
                logits, state, _ = model.decode(torch.tensor([[previous]]), state, memory, mask)
                worst = max(worst, float((logits[0, 0] - forced[b, t]).abs().max()))
                previous = int(token)
    print(f"{kw}: max |step - teacher forcing| {worst:.2e} (float64)")
    assert worst < 1e-12


def helpers_pad(sequences, fill=0):
    from toolkit.core.data.batching import pad

    return pad([np.asarray(s) for s in sequences], fill=fill, dtype=np.int64)


def test_padding_never_reaches_the_attention():
    """Changing the token ids of a padded source's padding leaves every output unchanged: the
    mask keeps the attention off the padded steps (and packing keeps them out of the encoder)."""
    model = tiny("multiplicative")
    rng = np.random.default_rng(1)
    ids, lengths = helpers_pad([rng.integers(4, len(SOURCE), n) for n in (6, 2)])
    targets = torch.from_numpy(helpers_pad([np.array([5, 6, EOS_ID]), np.array([4, EOS_ID])], fill=-100)[0])
    noisy = ids.copy()
    noisy[1, 2:] = rng.integers(4, len(SOURCE), 4)
    with torch.no_grad():
        clean, _ = model(torch.from_numpy(ids), torch.from_numpy(lengths), targets)
        dirty, _ = model(torch.from_numpy(noisy), torch.from_numpy(lengths), targets)
    assert torch.equal(clean, dirty)


@pytest.mark.parametrize("beam", [1, 4])
def test_translate_in_a_batch_equals_each_source_alone(beam):
    model = tiny("additive")
    rng = np.random.default_rng(2)
    sources = [rng.integers(4, len(SOURCE), n) for n in rng.integers(1, 9, 10)]
    search = Search(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=3)
    batched = translate(model, sources, search, batch_size=10)
    alone = [translate(model, [s], search)[0] for s in sources]
    for got, want in zip(batched, alone, strict=True):
        assert [h.tokens for h in got] == [h.tokens for h in want]
        assert np.allclose([h.score for h in got], [h.score for h in want], rtol=0, atol=1e-9)


def test_the_run_directory_round_trips_and_evaluate_scores_a_test_file(tmp_path):
    from toolkit.train.checkpoint import load_model
    from toolkit.train.evaluate import evaluate
    from toolkit.train.loop import train

    cfg = config(tmp_path, "gru", True, "additive", epochs=3)
    result = train(cfg, progress=False, log=lambda m: None)
    run = tmp_path / "run"
    target_vocab = json.loads((run / "target_vocab.json").read_text())
    assert target_vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and set(target_vocab[4:]) == set("ABCDEF")
    model, loaded_cfg, _, output_spec = load_model(run)
    assert loaded_cfg.model.attention == "additive" and len(output_spec.target_vocab) == len(target_vocab)
    test = reverse_pairs(tmp_path / "test.jsonl", n=60, seed=9)
    scores = evaluate(run, test, device="cpu")
    print(f"best epoch {result.best_epoch}: val {result.best}; test {scores}")
    assert {"loss", "token_accuracy", "exact_match", "error_rate", "sequence_error_rate"} <= set(scores)


def test_the_cli_trains_and_exports_a_seq2seq_model(tmp_path):
    data = reverse_pairs(tmp_path / "pairs.tsv.jsonl")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text(
        "".join(f"{r['source']}\t{r['target']}\n" for r in map(json.loads, Path(data).read_text().splitlines())),
        encoding="utf-8",
    )
    common = ["train", "--task", "seq2seq", "--data", tsv, "--target-level", "word", "--attention", "additive"]
    common += ["--hidden-size", "16", "--embedding-dim", "8", "--epochs", "2", "--device", "cpu", "--no-mlflow"]
    exported = helpers.in_process([*common, "--out", tmp_path / "r1", "--json"])
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout.strip().splitlines()[-1])
    print(summary["parity"])
    assert summary["parity"]["passed"] and (tmp_path / "r1" / "bundle" / "decoder_step.onnx").is_file()
    trained = helpers.in_process([*common, "--out", tmp_path / "r2", "--no-export", "--label-smoothing", "0.1"])
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["train"]["label_smoothing"] == 0.1
    assert not (tmp_path / "r2" / "bundle").exists()


VARIANTS = [
    {"attention": "none", "bidirectional": False},
    {"attention": "none", "bidirectional": True, "cell": "gru"},
    {"attention": "additive"},
    {"attention": "multiplicative", "cell": "rnn", "decoder_cell": "lstm", "decoder_layers": 1},
    {"attention": "additive", "cell": "gru", "bidirectional": False, "decoder_cell": "gru"},
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_the_onnx_encoder_and_decoder_step_compute_what_torch_computes(kw):
    """encoder.onnx on a padded batch and decoder_step.onnx fed its own state for six tokens,
    against the torch model in float64: memory, initial state, every step's log-probabilities."""
    from toolkit.export.seq2seq_graph import build_decoder_step_graph, build_encoder_graph, decoder_state_names
    from toolkit.runtime.providers import make_session

    model = tiny(**kw)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    inp, out = InputSpec("tokens", vocab=SOURCE), OutputSpec("seq2seq", target_vocab=TARGET)
    encoder = make_session(build_encoder_graph(weights, model.cfg, inp, out).SerializeToString(), "cpu")
    step = make_session(build_decoder_step_graph(weights, model.cfg, inp, out).SerializeToString(), "cpu")
    rng = np.random.default_rng(3)
    ids, lengths = helpers_pad([rng.integers(4, len(SOURCE), n) for n in (5, 1, 8, 3)])
    names = decoder_state_names(model.cfg)
    outs = encoder.run(None, {"tokens": ids, "lengths": lengths})
    encoded = dict(zip([o.name for o in encoder.get_outputs()], outs, strict=True))
    with torch.no_grad():
        memory, mask, state = model.encode(torch.from_numpy(ids), torch.from_numpy(lengths))
    flat = [t for s in state for t in (s if isinstance(s, tuple) else (s,))]  # per layer: h (, c)
    want_state = {n: torch.cat(flat[k :: len(names)]).numpy() for k, n in enumerate(names)}
    errors = {"memory": float(np.abs(encoded["memory"] - memory.numpy())[mask.numpy()].max())}  # real steps
    errors |= {n: float(np.abs(encoded[n] - want_state[n]).max()) for n in names}
    assert (encoded["mask"] == mask.numpy()).all()
    feeds = {n: encoded[n] for n in names}
    previous = np.full(4, BOS_ID, dtype=np.int64)
    needs = {i.name for i in step.get_inputs()}
    worst_step = 0.0
    for _ in range(6):
        feed = {"previous": previous, **feeds, **{k: encoded[k] for k in ("memory", "keys", "mask") if k in needs}}
        got = dict(zip([o.name for o in step.get_outputs()], step.run(None, feed), strict=True))
        with torch.no_grad():
            logits, state, _ = model.decode(torch.from_numpy(previous)[:, None], state, memory, mask)
        want = torch.log_softmax(logits[:, 0], -1).numpy()
        worst_step = max(worst_step, float(np.abs(got["logprobs"] - want).max()))
        feeds = {n: got[f"{n}_next"] for n in names}
        previous = rng.integers(4, len(TARGET), 4)
    print(f"{kw}: encoder {errors}; decoder steps max |logprobs| error {worst_step:.2e}")
    assert max(errors.values()) < 1e-5 and worst_step < 1e-5


def test_onnx_runtime_decodes_what_torch_decodes_on_a_trained_model(tmp_path):
    """The same search over ONNX Runtime's float32 steps and torch's float64 ones: greedy and
    beam 4 outputs identical on 300 sources (a trained model: no near-ties by chance)."""
    from toolkit.export.seq2seq_graph import build_decoder_step_graph, build_encoder_graph
    from toolkit.runtime.providers import make_session
    from toolkit.runtime.seq2seq import Translator
    from toolkit.train.checkpoint import load_model
    from toolkit.train.loop import train

    train(config(tmp_path, "lstm", True, "additive", epochs=6), progress=False, log=lambda m: None)
    model, cfg, inp, out = load_model(tmp_path / "run")
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    translator = Translator(
        make_session(build_encoder_graph(weights, cfg.model, inp, out).SerializeToString(), "cpu"),
        make_session(build_decoder_step_graph(weights, cfg.model, inp, out).SerializeToString(), "cpu"),
    )
    rng = np.random.default_rng(5)
    sources = [rng.integers(4, len(inp.vocab), n) for n in rng.integers(1, 8, 300)]
    model = model.double()
    for search in (Search(beam=1), Search(beam=4, nbest=2, length_penalty=0.6)):
        onnx_out = translator.translate(sources, search)
        torch_out = translate(model, sources, search)
        same = sum([h.tokens for h in a] == [h.tokens for h in b] for a, b in zip(onnx_out, torch_out, strict=True))
        worst = max(abs(a[0].score - b[0].score) for a, b in zip(onnx_out, torch_out, strict=True))
        print(f"beam {search.beam}: {same}/300 n-best lists identical; max |score difference| {worst:.2e}")
        assert same == 300 and worst < 1e-4
