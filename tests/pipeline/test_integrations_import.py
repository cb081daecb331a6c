"""``import ckptsync`` and the integrations package import no framework: each callback module imports its own."""

from __future__ import annotations

import subprocess
import sys


def test_importing_ckptsync_and_its_integrations_package_imports_no_framework():
    code = "import sys, ckptsync, ckptsync.integrations, ckptsync.integrations._common; print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning', 'torch') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"
