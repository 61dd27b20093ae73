"""The serving image (deploy/image/Containerfile), built and run with podman: it streams like the
offline model, answers its health check, drains on SIGTERM and exits 0, runs as a non-root user
and holds no torch, onnx or mlflow. `make image-test` prepares podman and a Debian base
(deploy/image/podman-setup.sh) and runs this module; `make test` leaves it out (marker `image`)
and it skips where podman cannot run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import yaml
from websockets.sync.client import connect

from tests.helpers import ROOT, exported_bundles, free_port
from tests.serving import features, http
from toolkit.core.tasks import softmax
from toolkit.runtime.engine import Engine

pytestmark = pytest.mark.image
BASE = os.environ.get("RNNKIT_IMAGE_BASE", "localhost/debian-base:bookworm")
TAG = "localhost/rnnkit-serve:test"
CA = "/etc/ssl/certs/ca-certificates.crt"  # for pip inside the build, where the index is behind a TLS proxy


def podman(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def build(tag: str, *args) -> float:
    started = time.monotonic()
    flags = ["--format", "docker", "-f", "deploy/image/Containerfile", "--build-arg", f"BASE={BASE}"]
    if os.path.exists(CA):
        flags += ["--build-arg", "PIP_CERT=/run/host-ca.crt", "-v", f"{CA}:/run/host-ca.crt:ro"]
    proc = subprocess.run(["podman", "build", "-q", *flags, *args, "-t", tag, "."], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    if shutil.which("podman") is None or podman("info", check=False).returncode != 0:
        pytest.skip("podman cannot run here (`make image-test` installs it: deploy/image/podman-setup.sh)")
    if podman("image", "exists", BASE, check=False).returncode != 0:
        pytest.skip(f"no base image {BASE} (deploy/image/podman-setup.sh makes one from Debian's packages)")
    bundle = exported_bundles(tmp_path_factory, "lstm", [("uni", "regress-step", False)])["uni"]
    for path in [bundle, *bundle.iterdir()]:  # the image's user (uid 10001) reads a mounted bundle
        path.chmod(0o755 if path.is_dir() else 0o644)
    baked = ROOT / "deploy" / "image" / ".test-bundle"  # inside the build context
    shutil.rmtree(baked, ignore_errors=True)
    shutil.copytree(bundle, baked)
    try:
        seconds = build(TAG)
        build(TAG + "-baked", "--build-arg", "BUNDLE=deploy/image/.test-bundle")
    finally:
        shutil.rmtree(baked, ignore_errors=True)
    size = int(podman("image", "inspect", TAG, "--format", "{{.Size}}").stdout.strip())
    print(f"image {TAG} on {BASE}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    yield {"plain": TAG, "baked": TAG + "-baked", "bundle": bundle}
    podman("rmi", "-f", TAG + "-baked", check=False)
    podman("image", "prune", "-f", check=False)  # the builds' intermediate stages


def run(image: str, *args, name: str) -> tuple[str, float]:
    """Start a container publishing port 8000 on loopback; ("127.0.0.1:PORT", seconds to ready)."""
    port = free_port()
    podman("rm", "-f", name, check=False)
    started = time.monotonic()
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *args, image)
    address = f"127.0.0.1:{port}"
    deadline = started + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return address, time.monotonic() - started
        except OSError:
            state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                pytest.fail(f"container {state}: {podman('logs', name, check=False).stderr[-3000:]}")
            time.sleep(0.1)


def test_a_baked_image_streams_like_the_offline_model_and_drains_on_sigterm(images):
    engine = Engine(images["bundle"], device="cpu")
    rng = np.random.default_rng(0)
    sequences = {f"s{i}": features(rng, int(rng.integers(5, 60))) for i in range(8)}
    name = "rnnkit-image-test"
    address, ready = run(images["baked"], name=name)
    print(f"start to ready: {ready:.2f} s")
    try:
        assert podman("healthcheck", "run", name, check=False).returncode == 0  # the image's HEALTHCHECK
        assert http(address, "/v1/model")[1]["manifest"]["task"] == "regress"
        got = {s: [] for s in sequences}
        with connect(f"ws://{address}/v1/streams") as ws:
            for start in range(0, 60, 7):  # interleaved chunks of 7 steps
                for s, seq in sequences.items():
                    if start < len(seq):
                        ws.send(json.dumps({"stream": s, "features": seq[start : start + 7]}))
                        got[s].append(json.loads(ws.recv(timeout=30)))
            ws.send(json.dumps({"stream": "open", "features": sequences["s0"][:3]}))
            ws.recv(timeout=30)
            podman("kill", "--signal", "TERM", name)
            notice = json.loads(ws.recv(timeout=30))  # the drain closes the open streams with a notice
        worst = 0.0
        for s, seq in sequences.items():
            streamed = np.concatenate([np.array(r["outputs"]) for r in got[s]])
            worst = max(worst, float(np.abs(streamed - engine.infer([np.array(seq, np.float32)])[0]).max()))
        print(f"8 streams through the container: max |served - offline| {worst:.1e}; notice {notice}")
        assert worst <= 1e-5
        assert notice.get("closed") is True
        code = podman("wait", name, timeout=60).stdout.strip()
        assert code == "0", podman("logs", name, check=False).stderr[-2000:]
    finally:
        podman("rm", "-f", name, check=False)


def test_a_mounted_bundle_and_token_secret_are_used_and_a_missing_bundle_is_a_clear_error(images, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    # A read-only root (as deploy/k8s runs it) with a writable /tmp, the bundle and a token secret.
    mounts = ["--read-only", "-v", f"{images['bundle']}:/models/bundle:ro", "-v", f"{secret}:/run/secrets/token:ro"]
    name = "rnnkit-image-mounted"
    address, _ = run(images["plain"], *mounts, "-e", "RNNKIT_SERVE_TOKEN_FILE=/run/secrets/token", name=name)
    try:
        assert http(address, "/health/ready")[0] == 200  # probes need no token
        assert http(address, "/v1/model")[0] == 401
        assert http(address, "/v1/model", headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        podman("rm", "-f", name, check=False)
    empty = podman("run", "--rm", images["plain"], check=False, timeout=60)
    print(empty.stderr.strip())
    assert empty.returncode == 2 and "no bundle at /models/bundle" in empty.stderr


def test_the_image_runs_as_a_user_and_holds_no_torch_onnx_or_mlflow(images):
    code = (
        "import importlib.util as u, os; print(os.getuid(), [m for m in ('torch', 'onnx', 'mlflow') if u.find_spec(m)])"
    )
    out = podman("run", "--rm", "--entrypoint", "python3", images["plain"], "-c", code).stdout.split(maxsplit=1)
    print("uid and heavy packages in the image:", out)
    assert out[0] != "0" and out[1].strip() == "[]"


def test_the_compose_stack_serves_the_registry_champion_and_prometheus_scrapes_it(images, tmp_path):
    """deploy/compose.yaml up with podman-compose: PostgreSQL, the MLflow tracking server on it,
    `rnnkit serve` of models:/NAME@champion and Prometheus scraping /metrics with the token. The
    two images from Docker Hub are replaced by stand-ins built from Debian's packages
    (tests/compose/); the rnnkit image is the compose file's own. A model is trained and
    registered from the host through the tracking server; serve (restarted by compose until the
    champion exists) then answers as the offline model does."""
    from tests.helpers import rnnkit, toy_data

    if shutil.which("podman-compose") is None:
        pytest.skip("no podman-compose (deploy/image/podman-setup.sh installs it)")
    compose_file = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    tag = compose_file["x-image"]["image"]
    args = compose_file["x-image"]["build"]["args"]
    seconds = build(tag, *[f for k, v in args.items() for f in ("--build-arg", f"{k}={v}")])
    size = int(podman("image", "inspect", tag, "--format", "{{.Size}}").stdout.strip())
    print(f"image {tag} (mlflow, psycopg): built in {seconds:.0f} s, {size / 1e6:.0f} MB")
    standins = {}
    for name in ("postgres", "prometheus"):
        standins[name] = f"localhost/{name}-standin:test"
        flags = ["--format", "docker", "-f", f"tests/compose/{name}.Containerfile", "--build-arg", f"BASE={BASE}"]
        proc = subprocess.run(["podman", "build", "-q", *flags, "-t", standins[name], "."], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    secrets, made = ROOT / "deploy" / "secrets", []
    for secret, value in (("db_password", "pg-test-pw"), ("serve_token", "compose-token")):
        if not (secrets / secret).exists():
            (secrets / secret).write_text(value + "\n")
            made.append(secrets / secret)
    token = (secrets / "serve_token").read_text().strip()
    ports = {k: free_port() for k in ("MLFLOW_PORT", "SERVE_PORT", "PROMETHEUS_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "MODEL_NAME": "composed"}
    env |= {"POSTGRES_IMAGE": standins["postgres"], "PROMETHEUS_IMAGE": standins["prometheus"]}
    compose = ["podman-compose", "-p", "rnnkit-test", "-f", "deploy/compose.yaml"]

    def up(*services):
        done = subprocess.run([*compose, "up", "-d", *services], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def wait(what, check, seconds=180):
        deadline = time.monotonic() + seconds
        while True:
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = podman("logs", f"rnnkit-test_{what}_1", check=False)
                pytest.fail(f"{what} not ready: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
            time.sleep(1)

    try:
        started = time.monotonic()
        up()
        mlflow_uri = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
        wait("mlflow", lambda: urllib.request.urlopen(mlflow_uri + "/health", timeout=2).status == 200)
        print(f"mlflow on postgres ready {time.monotonic() - started:.0f} s after up")
        data = toy_data(tmp_path, "classify")["data"]
        flags = ["--hidden-size", "8", "--embedding-dim", "8", "--epochs", "1", "--device", "cpu", "--no-progress"]
        flags += ["--tracking-uri", mlflow_uri, "--register", "composed", "--alias", "champion"]
        trained = rnnkit("train", "--task", "classify", "--data", data, "--out", tmp_path / "run", *flags)
        assert trained.returncode == 0, trained.stderr
        registered = podman("exec", "rnnkit-test_postgres_1", "psql", "-U", "mlflow", "-d", "mlflow", "-tAc",
                            "select name from registered_models").stdout.split()  # fmt: skip
        print(f"registered models in PostgreSQL: {registered}")
        assert "composed" in registered
        serve = f"127.0.0.1:{ports['SERVE_PORT']}"
        auth = {"Authorization": f"Bearer {token}"}
        up("serve")  # serve may be between two restarts: make sure it runs
        wait("serve", lambda: http(serve, "/health/ready")[0] == 200)
        assert http(serve, "/v1/model")[0] == 401
        status, model = http(serve, "/v1/model", headers=auth)
        assert status == 200 and model["source"] == "models:/composed@champion", model
        engine = Engine(tmp_path / "run" / "bundle", device="cpu")
        sequences = [list("abcab"), list("ccca"), list("b")]
        status, served = http(serve, "/v1/infer", {"sequences": sequences}, headers=auth)
        offline = engine.infer([engine.manifest["input"]["vocab"].index(t) for t in seq] for seq in sequences)
        pairs = zip(served["results"], offline, strict=True)
        worst = max(float(np.abs(np.array(r["scores"]) - softmax(y)).max()) for r, y in pairs)
        print(f"served the champion {time.monotonic() - started:.0f} s after up; max |served - offline| {worst:.1e}")
        assert status == 200 and worst <= 1e-5
        query = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/query?query=rnnkit_requests_total"

        def scraped():
            result = json.loads(urllib.request.urlopen(query, timeout=5).read())["data"]["result"]
            return any(r["metric"].get("kind") == "infer" and float(r["value"][1]) >= 1 for r in result)

        wait("prometheus", scraped, seconds=90)
        print("Prometheus scraped rnnkit_requests_total{kind=infer} from serve with the token")
    finally:
        subprocess.run([*compose, "down", "-v"], cwd=ROOT, env=env, capture_output=True, timeout=300)
        for path in made:
            path.unlink()
        podman("rmi", "-f", tag, *standins.values(), check=False)


def test_the_gpu_variant_builds_from_the_same_file_and_falls_back_to_the_cpu_without_a_gpu(images):
    """ORT=onnxruntime-gpu (what a CUDA runtime base gets): built here on the Debian base, as no
    CUDA base image can be pulled; its onnxruntime has the CUDA provider, and with no GPU the
    server says so and serves on the CPU (`--device auto`)."""
    tag = TAG + "-gpu"
    seconds = build(tag, "--build-arg", "ORT=onnxruntime-gpu")
    try:
        size = int(podman("image", "inspect", tag, "--format", "{{.Size}}").stdout.strip())
        code = "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
        providers = podman("run", "--rm", "--entrypoint", "python3", tag, "-c", code).stdout.strip()
        print(f"image {tag}: built in {seconds:.0f} s, {size / 1e6:.0f} MB; onnxruntime {providers}")
        assert "CUDAExecutionProvider" in providers
        name = "rnnkit-image-gpu"
        address, ready = run(tag, "-v", f"{images['bundle']}:/models/bundle:ro", name=name)
        try:
            served = http(address, "/v1/model")[1]["provider"]
            print(f"ready in {ready:.2f} s on {served}")
            assert served == "CPUExecutionProvider"
        finally:
            podman("rm", "-f", name, check=False)
    finally:
        podman("rmi", "-f", tag, check=False)
