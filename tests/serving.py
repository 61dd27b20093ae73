"""`rnnkit serve` as a real process on loopback, and small HTTP helpers, for the serve tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import ROOT, free_port

PATCHED_MAIN = "\nimport sys\nfrom cli.main import main\nsys.argv = ['rnnkit', *sys.argv[1:]]\nmain()\n"


@contextlib.contextmanager
def server(bundle, *flags, env=None, patch=None):
    """`rnnkit serve` in its own process; yields (process, "127.0.0.1:PORT") once it is ready.
    `patch`: Python code run in that process before the command (to inject a fault)."""
    port = free_port()
    command = ["-m", "cli.main"] if patch is None else ["-c", patch + PATCHED_MAIN]
    proc = subprocess.Popen(
        [sys.executable, *command, "serve", str(bundle), "--port", str(port), "--device", "cpu", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"rnnkit serve did not start: {proc.stdout.read()[-3000:]}")
            time.sleep(0.2)
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def http(address, path, body=None, headers=None) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    kind = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(f"http://{address}{path}", data=data, headers={**kind, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def features(rng, steps, width=2) -> list:
    return rng.normal(size=(steps, width)).round(4).tolist()
