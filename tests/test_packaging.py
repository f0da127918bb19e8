"""The wheel carries what the package needs at run time: the C++ kernels' sources and headers
(cpu_kernels.py compiles them on first use; a wheel without them always runs the slower torch path)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "radixrt" / "workers" / "layers" / "csrc"


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    """The names inside a wheel built from a copy of the tree (the checkout gets no build/ folder)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "radixrt", src / "radixrt", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run([*pip_wheel, "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("radixrt-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_wheel_holds_every_cpp_source_and_header_of_the_cpu_kernels(wheel_files):
    sources = sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h"))
    assert any(p.suffix == ".h" for p in sources) and any(p.suffix == ".cpp" for p in sources)
    missing = [p.name for p in sources if f"radixrt/workers/layers/csrc/{p.name}" not in wheel_files]
    assert missing == []


def test_the_wheel_holds_every_source_the_kernel_build_lists(wheel_files):
    from radixrt.workers.layers.cpu_kernels import SOURCES

    assert all(f"radixrt/workers/layers/csrc/{p.name}" in wheel_files for p in SOURCES)
