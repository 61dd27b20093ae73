"""A repository written by `rnnkit deploy triton`, served by a real Triton Inference Server (2.51,
the `tritonserver` of the nvidia-pytriton wheel, CPU only: its Python-backend model; the
onnxruntime-backend model needs NVIDIA's image and is checked by tests/test_triton_repository.py).

Run by `make triton-test` (which sets the server up with deploy/triton/setup-local.sh); skipped
where that server is not set up, and failed instead when RNNKIT_REQUIRE_TRITON=1 (CI)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import helpers
from toolkit.runtime.engine import Engine

pytestmark = pytest.mark.triton
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the dev extra) is not installed")

SERVER = Path(os.environ.get("RNNKIT_TRITON", helpers.ROOT / ".venv-triton")) / "bin" / "rnnkit-tritonserver"
if not SERVER.exists():
    why = f"no local Triton at {SERVER} (make triton-test sets it up)"
    if os.environ.get("RNNKIT_REQUIRE_TRITON") == "1":
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)

STREAMS = [("lstm_classify", "classify", "lstm"), ("rnn_regress_step", "regress-step", "rnn")]
WHOLE = [("gru_bi_tag", "tag", "gru"), ("lstm_bi_regress", "regress", "lstm")]
#: Triton batches the sequences' chunks into one call where the offline reference runs one
#: sequence at a time; a batch may round a few float32 ulps differently (of the outputs' size), no more.
ULPS = 16


def _error(got: np.ndarray, want: np.ndarray) -> float:
    """max abs error in units of the tolerance (<= 1 passes)."""
    scale = max(1.0, float(np.abs(want).max()))
    return float(np.abs(got - want).max()) / (ULPS * float(np.finfo(np.float32).eps) * scale)


class Triton:
    def __init__(self, repositories: list[Path], models: list[str], log: Path):
        self.port = helpers.free_port()
        args = [f"--model-repository={r}" for r in repositories] + [f"--load-model={m}" for m in models]
        self.log = log
        self.process = subprocess.Popen(
            [
                SERVER,
                *args,
                "--model-control-mode=explicit",
                "--http-address=127.0.0.1",
                "--grpc-address=127.0.0.1",
                f"--grpc-port={self.port}",
                f"--http-port={helpers.free_port()}",
                "--allow-metrics=false",
                "--exit-timeout-secs=10",
            ],
            stdout=open(log, "w"),  # noqa: SIM115 (the server's log, read on failure)
            stderr=subprocess.STDOUT,
        )
        self.url = f"127.0.0.1:{self.port}"
        client = grpc.InferenceServerClient(self.url)
        started = time.monotonic()
        while not self._ready(client, models):
            if self.process.poll() is not None or time.monotonic() - started > 90:
                self.process.kill()
                pytest.fail(f"Triton did not become ready: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        self.ready_s = time.monotonic() - started
        print(f"Triton ready in {self.ready_s:.1f} s")

    @staticmethod
    def _ready(client, models) -> bool:
        try:
            return client.is_server_ready() and all(client.is_model_ready(m) for m in models)
        except Exception:
            return False

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def _bundles(tmp_path_factory, specs, bidirectional):
    made = {}
    for name, task, cell in specs:
        made.update(helpers.exported_bundles(tmp_path_factory, cell, [(name, task, bidirectional)]))
    return made


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One Triton with the Python-backend models of four repositories (two streaming, two whole)."""
    bundles = {**_bundles(tmp_path_factory, STREAMS, False), **_bundles(tmp_path_factory, WHOLE, True)}
    root = tmp_path_factory.mktemp("triton")
    repositories = []
    for name, bundle in bundles.items():
        out = root / name
        deployed = helpers.in_process(
            ["deploy", "triton", bundle, "--out", out, "--name", name, "--max-queue-delay-us", "2000"]
        )
        assert deployed.returncode == 0, deployed.stderr
        repositories.append(out)
    server = Triton(repositories, [f"{n}_python" for n in bundles], root / "triton.log")
    yield server, {n: Engine(b, device="cpu") for n, b in bundles.items()}
    if server.process.poll() is None:
        server.stop()


def _request(engine, x):
    dtype = "INT64" if engine.input_name == "tokens" else "FP32"
    tensor = grpc.InferInput(engine.input_name, [1, *x.shape], dtype)
    tensor.set_data_from_numpy(x[None].astype(np.int64 if dtype == "INT64" else np.float32))
    return tensor


def _chunk(engine, rng, steps):
    if engine.input_name == "tokens":
        return rng.integers(4, engine.vocab_size, steps)
    return rng.normal(size=(steps, engine.width)).astype(np.float32)


def _counts(client, model):
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))  # JSON leaves out zeros


@pytest.mark.parametrize("name", [s[0] for s in STREAMS])
def test_many_concurrent_streams_give_the_offline_outputs(served, name):
    """48 sequences at once, each a stream of chunks of 1-5 steps with sequence_start/end; every
    reply equals the bundle run offline one stream at a time, chunk by chunk. Every fourth
    sequence sends a bad chunk mid-stream: it gets an error reply, and its next good chunk goes on
    from the state before the bad one (nothing of a failed request is kept)."""
    server, engines = served
    engine, model = engines[name], f"{name}_python"
    client = grpc.InferenceServerClient(server.url)
    before = _counts(client, model)
    rng = np.random.default_rng(7)
    plans = []
    for seq in range(48):
        chunks = [_chunk(engine, rng, int(n)) for n in rng.choice([1, 1, 2, 3, 5], size=8)]
        stream = engine.stream()
        plans.append((1000 + seq, chunks, [stream.push(c) for c in chunks]))
    errors, worst, barrier = [], [0.0], threading.Barrier(len(plans))

    def run(plan):
        seq, chunks, wants = plan
        mine = grpc.InferenceServerClient(server.url)
        barrier.wait()
        for i, (chunk, want) in enumerate(zip(chunks, wants, strict=True)):
            if i == 4 and seq % 4 == 0:
                bad = chunk.copy()
                if engine.input_name == "tokens":
                    bad[0] = engine.vocab_size + 3
                else:
                    bad[0, 0] = np.nan
                with pytest.raises(grpc.InferenceServerException) as refused:
                    mine.infer(model, [_request(engine, bad)], sequence_id=seq)
                errors.append(refused.value.message())
            got = mine.infer(
                model, [_request(engine, chunk)], sequence_id=seq, sequence_start=i == 0, sequence_end=i == 7
            ).as_numpy(engine.manifest["output"]["name"])
            assert got.shape == (1, *want.shape)
            worst[0] = max(worst[0], _error(got[0], want))

    with ThreadPoolExecutor(len(plans)) as pool:
        list(pool.map(run, plans))
    inferences, executions = (a - b for a, b in zip(_counts(client, model), before, strict=True))
    print(f"{name}: 48 streams x 8 chunks, worst error {worst[0]:.3f} of tolerance; ", end="")
    print(f"{inferences} requests in {executions} calls")
    print(f"refused: {errors[0]}")
    assert worst[0] <= 1
    assert len(errors) == 12 and all(("outside the vocabulary" in e) or ("finite" in e) for e in errors)
    assert inferences == 48 * 8 + 12  # the refused requests are counted by Triton too
    assert executions < inferences  # the oldest strategy batched chunks of different sequences


def test_a_request_of_an_ended_or_unknown_sequence_is_refused(served):
    server, engines = served
    engine, model = engines["lstm_classify"], "lstm_classify_python"
    client = grpc.InferenceServerClient(server.url)
    chunk = _chunk(engine, np.random.default_rng(0), 2)
    client.infer(model, [_request(engine, chunk)], sequence_id=5, sequence_start=True, sequence_end=True)
    with pytest.raises(grpc.InferenceServerException, match="START flag"):
        client.infer(model, [_request(engine, chunk)], sequence_id=5)
    with pytest.raises(grpc.InferenceServerException, match="steps in one request"):
        big = _chunk(engine, np.random.default_rng(0), 4097)
        client.infer(model, [_request(engine, big)], sequence_id=6, sequence_start=True)
    # Triton holds the slot of a started sequence until its END (or its idle timeout), and waits for
    # open sequences at shutdown: end it
    client.infer(model, [_request(engine, chunk)], sequence_id=6, sequence_start=True, sequence_end=True)


@pytest.mark.parametrize("name", [s[0] for s in WHOLE])
def test_whole_sequences_of_different_lengths_are_batched_exactly(served, name):
    """64 concurrent requests of lengths 1-30 (bidirectional): the Python model pads each batch
    with its lengths; every reply equals `infer` of the bundle offline."""
    server, engines = served
    engine, model = engines[name], f"{name}_python"
    client = grpc.InferenceServerClient(server.url)
    before = _counts(client, model)
    rng = np.random.default_rng(3)
    sequences = [_chunk(engine, rng, int(n)) for n in rng.integers(1, 31, 64)]
    wants = engine.infer(sequences)
    out = engine.manifest["output"]["name"]

    def run(x):
        return grpc.InferenceServerClient(server.url).infer(model, [_request(engine, x)]).as_numpy(out)[0]

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(run, sequences))
    worst = max(_error(g, w) for g, w in zip(got, wants, strict=True))
    inferences, executions = (a - b for a, b in zip(_counts(client, model), before, strict=True))
    print(f"{name}: 64 sequences, worst error {worst:.3f} of tolerance; {inferences} requests in {executions} calls")
    assert worst <= 1 and all(g.shape == w.shape for g, w in zip(got, wants, strict=True))
    assert executions < inferences


def test_triton_stops_on_sigterm(served):
    """With every sequence ended, SIGTERM stops Triton at once, exit code 0."""
    server, _ = served
    started = time.monotonic()
    code = server.stop()
    print(f"Triton exited {code} {time.monotonic() - started:.1f} s after SIGTERM (ready took {server.ready_s:.1f} s)")
    assert code == 0
