"""Loading a model file costs at most about twice the memory its valid arrays need, whatever it claims.

Each file is loaded in a child process whose address space is limited (``RLIMIT_AS``) to what it had
after importing NumPy and scratchpilot, plus twice the file's valid arrays, plus a fixed slack: a loader
that allocates what a crafted file claims gets a MemoryError (or is killed) instead of a clean refusal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import model_files
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")

#: what loading may take beyond its arrays: parsing the config, the layer objects, read buffers
SLACK_BYTES = 48 << 20

_CHILD = r"""
import resource, sys, traceback
import numpy
from scratchpilot import nn

def address_space():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))

path, allowance = sys.argv[1], int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (address_space() + allowance, resource.RLIM_INFINITY))
try:
    model = nn.load(path)
except nn.ModelFileError as exc:
    print("REFUSED", exc)
except BaseException:
    traceback.print_exc()
    sys.exit(3)
else:
    print("LOADED", model.n_parameters())
"""


def load_limited(path: Path, array_bytes: int) -> subprocess.CompletedProcess:
    """``nn.load(path)`` in a child limited to its baseline + 2 × ``array_bytes`` + the slack."""
    return subprocess.run([sys.executable, "-c", _CHILD, str(path), str(2 * array_bytes + SLACK_BYTES)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    return {name: (folder / f"{name}.npz", build(folder / f"{name}.npz"))
            for name, build in model_files.CRAFTED.items()}


@pytest.mark.parametrize("name", sorted(model_files.CRAFTED))
def test_a_crafted_model_file_is_refused_within_the_memory_bound(crafted, name):
    path, array_bytes = crafted[name]
    done = load_limited(path, array_bytes)
    assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stdout.startswith(f"REFUSED {path}"), done.stdout
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stdout + done.stderr


def test_a_valid_model_loads_within_twice_its_arrays(tmp_path):
    path = tmp_path / "wide.npz"
    array_bytes = model_files.valid_wide(path, width=4000)
    assert array_bytes > SLACK_BYTES  # big enough for the bound to mean something
    done = load_limited(path, array_bytes)
    assert done.returncode == 0 and done.stdout.startswith("LOADED"), done.stdout + done.stderr
