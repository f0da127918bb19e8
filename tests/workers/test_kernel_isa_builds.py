"""The kernels compile (`-march=native`) for whatever CPU runs them, taking AVX-512 / VNNI /
AVX512-BF16, AVX2 or portable branches by its flags. A CPU we do not run on must still compile:
each source whose branches depend on those flags is compiled here for the x86 CPU kinds that take
different ones (syntax and template instantiation only, no code generated), all sources as one
translation unit per CPU kind so that torch's headers are parsed once per kind. An AVX-512 CPU
without VNNI (Skylake-X) once failed to build them, which left it on the pure-PyTorch paths."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest
from torch.utils.cpp_extension import include_paths

from radixrt.workers.layers import cpu_kernels

# each x86 CPU kind by the flags the sources branch on (__AVX2__, __AVX512F__, __AVX512VNNI__,
# __AVX512BF16__): AVX2 only; AVX-512 without VNNI or BF16; with VNNI, without BF16; with both
MARCHES = {
    "haswell": {"avx2"},
    "skylake-avx512": {"avx2", "avx512f"},
    "icelake-server": {"avx2", "avx512f", "avx512_vnni"},
    "sapphirerapids": {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"},
}
CXX = os.environ.get("CXX", "g++")

pytestmark = [
    pytest.mark.skipif(shutil.which(CXX) is None, reason="no C++ compiler here: the kernels never build"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="cross-compiling for x86 CPUs needs an x86 compiler"),
]


def _compile(march: str, unity: str) -> tuple[str, str]:
    flags = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    cmd = [CXX, "-std=c++17", f"-march={march}", "-fopenmp", "-fsyntax-only", *flags, unity]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return march, done.stderr if done.returncode else ""


def test_the_kernels_compile_for_every_x86_isa_branch(tmp_path):
    unity = tmp_path / "kernels.cpp"
    unity.write_text("".join(f'#include "{source}"\n' for source in cpu_kernels.SOURCES))
    # the kind that takes this CPU's own branches is left out: the suite's native build compiles
    # those, and the kernel tests run them
    own = cpu_kernels.cpu_flags() & set.union(*MARCHES.values())
    marches = [march for march, flags in MARCHES.items() if flags != own]
    assert len(marches) >= 3
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda march: _compile(march, str(unity)), marches))
    failed = {march: [line for line in err.splitlines() if "error" in line][:5] for march, err in results if err}
    assert not failed, failed
