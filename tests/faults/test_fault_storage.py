"""Fault 7: storage that cannot take a byte (disk full, read-only, no permission) is refused with a clear
error before Ray starts or training begins, not an hour later at the first checkpoint.

A full disk is stood in for by a file-size limit of zero bytes (RLIMIT_FSIZE) on the real command: writes
then fail with EFBIG exactly where a full disk fails with ENOSPC. A read-only filesystem (/sys) is a
case of tests/test_bad_inputs.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from fault_helpers import REPO

# The command, with writes of any size failing from the moment it starts (SIGXFSZ ignored so that a write
# returns the error). Modules are imported first: the disk that is full is the storage's, not /tmp, where
# torch checks at import that it can write.
NO_SPACE_LEFT = """
import resource, signal, sys
import run_study, sklearn.datasets, study.launch, study.sweep
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
sys.exit(run_study.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["train", "--method", "ce", "--epochs", "1"], ["sweep", "--space", "quick"]],
                         ids=["train", "sweep"])
def test_storage_that_cannot_take_a_byte_fails_before_training(command, tmp_path):
    storage = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-c", NO_SPACE_LEFT, *command, "--storage", str(storage)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == f"error: --storage {str(storage)!r} is not writable (File too large)\n"
    assert "Ray" not in done.stdout + done.stderr  # refused before a Ray runtime started
    assert not storage.exists() and not list(tmp_path.iterdir())
