"""Replacing a bundle is atomic: an export killed between any two filesystem operations leaves a
complete bundle at OUT, the old one or the new one, with the atomic swap and without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from toolkit.core.bundle import FORMAT, FORMAT_VERSION, recover, write_bundle


def files(version: str) -> dict[str, bytes]:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version}
    made = {"manifest.json": json.dumps(manifest).encode(), "model.onnx": version.encode() * 50_000}
    if version == "new":
        made["step.onnx"] = b"step" * 1000
    return made


# Runs write_bundle(OUT, files("new")) and dies (os._exit, as kill -9 would: no cleanup runs)
# just before its CRASH_AT-th filesystem operation.
KILLED = """
import os, shutil, sys, tempfile
from pathlib import Path
from tests.test_bundle_replace import files
from toolkit.core import bundle

crash_at, mode, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
calls = 0

def crashing(fn):
    def op(*args, **kwargs):
        global calls
        calls += 1
        if calls == crash_at:
            os._exit(77)
        return fn(*args, **kwargs)
    return op

os.replace, os.fsync = crashing(os.replace), crashing(os.fsync)
shutil.rmtree, tempfile.mkdtemp = crashing(shutil.rmtree), crashing(tempfile.mkdtemp)
bundle.exchange = crashing(getattr(bundle, "exchange", lambda a, b: False) if mode == "swap" else lambda a, b: False)
bundle.write_bundle(out, files("new"))
"""


def contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("mode", ["swap", "renames"])
def test_a_killed_replace_leaves_the_old_or_the_new_bundle(tmp_path, mode):
    old, new = files("old"), files("new")
    seen = []
    for crash_at in range(1, 40):
        d = tmp_path / f"k{crash_at}"
        out = d / "bundle"
        write_bundle(out, old)
        proc = subprocess.run(
            [sys.executable, "-c", KILLED, str(crash_at), mode, str(out)], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode in (0, 77), proc.stderr
        recover(out)  # what every reader does first (read_manifest): put back a bundle left at .bundle.old
        got = contents(out)
        assert got in (old, new), f"crash before operation {crash_at}: a mix {sorted(got)}"
        seen.append("new" if got == new else "old")
        write_bundle(out, new)  # the next export goes through and leaves nothing of the old one behind
        assert contents(out) == new and not (d / ".bundle.old").exists()
        if proc.returncode == 0:
            break
    print(f"{mode}: OUT after a kill before each operation: {seen}")
    assert proc.returncode == 0 and seen[-1] == "new" and "old" in seen
