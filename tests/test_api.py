"""The public Python API: `import tfcnn` is cheap, and every name in `tfcnn.__all__` resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_tfcnn_loads_no_stage_and_no_tensorflow():
    code = (
        "import sys, tfcnn; "
        "heavy = [m for m in ('tensorflow', 'keras', 'numpy', 'tfcnn.export', 'tfcnn.train', 'tfcnn.data') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_public_name_resolves():
    import tfcnn
    import tfcnn.export.predict  # noqa: F401  (imports the prediction module: no submodule may shadow a public name)

    for name in tfcnn.__all__:
        assert callable(getattr(tfcnn, name)), name
    assert set(tfcnn.__all__) <= set(dir(tfcnn))
    with pytest.raises(AttributeError, match="no attribute 'export_modle'"):
        tfcnn.export_modle  # noqa: B018
