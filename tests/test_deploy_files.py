"""deploy/: the Kubernetes manifests pass `kubernetes-validate --strict` (and a misspelt field
fails it), and the compose file, Prometheus config, manifests and Containerfile agree with each
other and with the server: ports, probe and metrics paths, user, token, grace period vs drain."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT
from toolkit.runtime.server import Settings

DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
ROUTES = set(re.findall(r'@app\.(?:get|post|websocket)\("([^"]+)"', (ROOT / "toolkit/runtime/server.py").read_text()))
CONTAINERFILE = (DEPLOY / "image" / "Containerfile").read_text()
ENTRYPOINT = (DEPLOY / "image" / "entrypoint.sh").read_text()
PORT = int(re.search(r"--port (\d+)", ENTRYPOINT).group(1))
USER = int(re.search(r"^USER (\d+)$", CONTAINERFILE, re.M).group(1))


def validate(*paths: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))
    return subprocess.run([tool, "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120)


def k8s(kind: str) -> dict:
    docs = [d for p in K8S for d in yaml.safe_load_all(p.read_text()) if d]
    return next(d for d in docs if d["kind"] == kind)


def test_kubernetes_manifests_are_valid_and_the_validator_is_strict(tmp_path):
    result = validate(*K8S)
    print(result.stdout + result.stderr)
    assert result.returncode == 0 and result.stdout.count("passed") == len(K8S)
    typo = tmp_path / "deployment.yaml"
    typo.write_text((DEPLOY / "k8s" / "deployment.yaml").read_text().replace("readinessProbe", "readinesProbe"))
    refused = validate(typo)
    print(refused.stdout + refused.stderr)
    assert refused.returncode != 0 and "readinesProbe" in refused.stdout + refused.stderr


def test_the_deployment_matches_the_image_and_the_server():
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["ports"][0]["containerPort"] == PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready" in ROUTES
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live" in ROUTES
    assert pod["securityContext"]["runAsUser"] == USER
    # SIGTERM starts the drain; the kubelet kills the pod after the grace period.
    assert pod["terminationGracePeriodSeconds"] > Settings().drain_timeout
    assert container["env"][0]["name"] == "RNNKIT_SERVE_TOKEN"
    selector = k8s("Deployment")["spec"]["selector"]["matchLabels"]
    assert (
        k8s("Service")["spec"]["selector"] == selector == k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    )
    assert k8s("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == k8s("Deployment")["metadata"]["name"]


def test_compose_prometheus_and_the_image_agree():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "serve", "prometheus"}
    serve, mlflow = services["serve"], services["mlflow"]
    assert serve["build"]["args"]["MLFLOW"] == "1" and "psycopg-binary" in serve["build"]["args"]["EXTRA"]
    port = re.search(r"--port (\d+)", mlflow["command"][0]).group(1)
    assert serve["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    assert re.fullmatch(r"models:/\$\{MODEL_NAME:-[\w-]+\}@champion", serve["environment"]["RNNKIT_MODEL"])
    assert "postgresql+psycopg://" in mlflow["command"][0] and "@postgres:5432/" in mlflow["command"][0]
    assert serve["ports"] == [f"127.0.0.1:${{SERVE_PORT:-8000}}:{PORT}"]
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    grace = int(serve["stop_grace_period"].rstrip("s"))
    assert grace > Settings().drain_timeout
    for name, secret in compose["secrets"].items():  # each secret has an example beside it
        assert (DEPLOY / (secret["file"] + ".example")).is_file(), name
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" in ROUTES
    assert scrape["static_configs"][0]["targets"] == [f"serve:{PORT}"]
    assert scrape["authorization"]["credentials_file"] == "/run/secrets/serve_token"  # /metrics needs it
    assert "serve_token" in services["prometheus"]["secrets"]


def test_the_image_health_check_asks_a_route_the_server_has():
    path = re.search(r"HEALTHCHECK.*?'http://127\.0\.0\.1:(\d+)(/[\w/]+)'", CONTAINERFILE, re.S)
    assert path and int(path.group(1)) == PORT and path.group(2) in ROUTES


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_entrypoint_refuses_a_missing_bundle_and_reads_the_token_file(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "rnnkit").write_text('#!/bin/sh\necho "rnnkit $* token=$RNNKIT_SERVE_TOKEN"\n')
    (fake / "rnnkit").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "RNNKIT_MODEL": str(tmp_path / "none")}
    entry = DEPLOY / "image" / "entrypoint.sh"
    missing = subprocess.run(["sh", str(entry)], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "no bundle at" in missing.stderr
    (tmp_path / "token").write_text("abc\n")
    uri = {**env, "RNNKIT_MODEL": "models:/m@champion", "RNNKIT_SERVE_TOKEN_FILE": str(tmp_path / "token")}
    ran = subprocess.run(["sh", str(entry), "--max-streams", "7"], env=uri, capture_output=True, text=True)
    print(ran.stdout, ran.stderr)
    assert (
        ran.stdout.strip() == f"rnnkit serve models:/m@champion --host 0.0.0.0 --port {PORT} --max-streams 7 token=abc"
    )


def test_the_image_requirements_carry_every_package_the_serving_path_imports():
    """deploy/image/requirements.txt pins the image's Python packages besides ONNX Runtime (added
    by the Containerfile) and rnnkit (installed --no-deps; pip brings the pins' own requirements):
    every distribution that toolkit/runtime, toolkit/core and cli import at module level must be
    pinned there (a missing one only shows when the container starts)."""
    import ast
    import importlib.metadata as md

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pinned = {
        normal(re.split(r"[=<>~\[ ]", line)[0])
        for line in (DEPLOY / "image" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    imported = set()
    serving = [*(ROOT / "toolkit" / "runtime").glob("*.py"), *(ROOT / "toolkit" / "core").rglob("*.py")]
    for path in [*serving, *(ROOT / "cli").glob("*.py")]:
        for node in ast.parse(path.read_text()).body:  # module level: what importing the module needs
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    owners = md.packages_distributions()
    needed = {normal(d) for m in imported for d in owners.get(m, [])} - {"rnnkit", "onnxruntime", "onnxruntime-gpu"}
    print("distributions the serving path imports:", sorted(needed))
    assert "picows" in needed and "uvicorn" in needed  # the scan sees the server's imports
    assert not needed - pinned, f"deploy/image/requirements.txt lacks {sorted(needed - pinned)}"
