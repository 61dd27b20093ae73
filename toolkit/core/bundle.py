"""The bundle directory: model.onnx, step.onnx (unidirectional), manifest.json, parity.json.

Reading a bundle (`read_manifest`, `read_graph`) needs only the standard library and pydantic
(`toolkit.export.verify` checks the graphs as ONNX). Writing is atomic: everything goes to a
temporary sibling directory that is swapped with the old bundle in one step, so an export killed
at any point leaves either the old bundle or the new one at OUT, never a mix and never nothing
(see `write_bundle`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from toolkit.core import manifest as schema
from toolkit.core.atomic import recover_tree, replace_tree
from toolkit.core.errors import RnnkitError
from toolkit.core.jsontext import JSONTextError, check_format, parse

FORMAT = "rnnkit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 2**20  # a vocabulary of a million words is about 15 MB
PARITY = "parity.json"


class BundleError(RnnkitError):
    """A bundle is missing files, corrupt, from another version, or does not match its manifest."""

    exit_code = 2


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` (name -> bytes) as the bundle directory `out`, atomically: an export killed
    at any point leaves the old bundle or the new one at OUT (`toolkit.core.atomic.replace_tree`)."""
    if not replace_tree(Path(out), files, MANIFEST):
        raise BundleError(f"{out} exists and is not an rnnkit bundle; choose an empty or new --out directory")


def recover(out: Path) -> None:
    """Put back a bundle that a replace stopped between its two renames left at `.OUT.old`."""
    recover_tree(Path(out), MANIFEST)


def read_manifest(bundle: str | Path) -> dict:
    """The bundle's manifest, read as a bounded regular file and checked against the schema
    (`toolkit.core.manifest`) before any field is used."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    with contextlib.suppress(OSError):  # a reader without write access still reads what it can
        recover(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a directory (expected a bundle written by `rnnkit export`)")
    data = read_regular(path, MAX_MANIFEST_BYTES, f"{bundle} is not a complete rnnkit bundle")
    try:
        manifest = parse(data)
    except JSONTextError as e:
        raise BundleError(f"{path}: not JSON ({e})") from None
    check_format(manifest, str(path), FORMAT, FORMAT_VERSION, "bundle manifest", BundleError)
    try:
        schema.check(manifest)
    except ValueError as e:
        raise BundleError(f"{path}: does not match the bundle format: {e}; export the bundle again") from None
    return manifest


def check_certificate(bundle: Path, manifest: dict) -> None:
    """parity.json must be there and say what the manifest's parity summary says."""
    path = bundle / PARITY
    try:
        report = parse(read_regular(path, MAX_MANIFEST_BYTES, "the bundle's parity certificate"))
    except JSONTextError as e:
        raise BundleError(f"{path}: not JSON ({e})") from None
    summary = report.get("summary") if isinstance(report, dict) else None
    if not isinstance(summary, dict) or not isinstance(report.get("cases"), list):
        raise BundleError(
            f'{path}: not a parity certificate (expected {{"summary": ..., "rule": ..., "cases": [...]}})'
        )
    stated = manifest["parity"]
    if summary.get("passed") is not stated["passed"] or summary.get("cases") != stated["cases"]:
        raise BundleError(
            f"{path}: says passed={summary.get('passed')!r} over {summary.get('cases')!r} cases, the manifest "
            f"passed={stated['passed']!r} over {stated['cases']} cases; one of them was changed after export"
        )


def check_certified(bundle: Path, manifest: dict, instead: str) -> None:
    """The one rule for running a bundle: its parity check passed, and its certificate is there
    and agrees with the manifest. `instead`: what the user may do otherwise."""
    if not manifest["parity"]["passed"]:
        raise BundleError(
            f"{bundle}: this bundle failed its parity check (worst: {manifest['parity']['worst_case']}); {instead}"
        )
    try:
        check_certificate(bundle, manifest)
    except BundleError as e:
        raise BundleError(f"{e}; {instead}") from None


def read_regular(path: Path, limit: int, missing: str) -> bytes:
    """The bytes of `path`, which must be a regular file (not a symlink, device, pipe or
    directory) of at most `limit` bytes; anything else is a BundleError naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; {missing}") from None
    except OSError as e:  # ELOOP: a symlink; EISDIR, EACCES, ...
        raise BundleError(f"{path}: cannot be read as a regular file ({e.strerror})") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "not a regular file; a bundle holds regular files only"
    elif info.st_size > limit:
        problem = f"{info.st_size} bytes, over the {limit} this file may have"
    if problem:
        os.close(fd)  # (os.fdopen refuses a directory, so the file object comes after the checks)
        raise BundleError(f"{path}: {problem}")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: over the {limit} bytes this file may have")
    return data


def read_graph(bundle: str | Path, name: str, info: dict) -> bytes:
    """A graph file's bytes, checked against the size and sha256 the manifest recorded for it."""
    path = Path(bundle) / name
    data = read_regular(path, info.get("bytes") or schema.MAX_GRAPH_BYTES, "the manifest lists it")
    digest = sha256(data)
    if digest != info.get("sha256"):
        raise BundleError(
            f"{path}: sha256 {digest[:16]}... does not match the manifest's {str(info.get('sha256'))[:16]}...; "
            "the graph was changed or corrupted after export: export it again"
        )
    return data
