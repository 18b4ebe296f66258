"""Bad input around the data readers: every one is one line naming the file or option, exit status 2, nothing
written (CLI ``main`` in-process, except where the point is what the process imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Prints which heavy modules the CLI imported before answering.
_IMPORTS_PROBE = (
    "import sys; from fsmis_bench.cli import main; status = main(sys.argv[1:]); "
    "print([m for m in ('torch', 'lightning', 'pandas') if m in sys.modules]); sys.exit(status)"
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nosuch", "--fold", "0"], "unknown method 'nosuch'"),
        (["--method", "panet", "--fold", "9"], "--fold 9: fold out of range (valid: 0..4)"),
        (["--method", "panet", "--fold", "0", "--profile", "gpu"], "unknown profile 'gpu'"),
        (["--method", "panet", "--fold", "0", "--dataset", "ct"], "unknown dataset 'ct'"),
    ],
)
def test_bad_names_are_answered_before_torch_is_imported(tmp_path, args, message):
    command = [sys.executable, "-c", _IMPORTS_PROBE, "run", *args, "--output", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == "[]"
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()
