"""pytest runs the notebooks too (nbval): by default under the smoke profile, in a throw-away
artifacts folder, so that a test run neither takes hours nor touches a reader's checkpoints.
Set DIFFUSION_PROFILE or DIFFUSION_ARTIFACTS to override."""

import os
import shutil
import tempfile

os.environ.setdefault("DIFFUSION_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
if "DIFFUSION_ARTIFACTS" not in os.environ:
    _tmp = tempfile.mkdtemp(prefix="diffusion-pytest-artifacts-")
    os.environ["DIFFUSION_ARTIFACTS"] = _tmp

    def pytest_sessionfinish(session, exitstatus):
        shutil.rmtree(_tmp, ignore_errors=True)
