"""runtime/cuda/kernels.cu compiled for the CPU, for the tests (no GPU, no CUDA toolkit).

cuda_host_shim.h turns the kernels into plain C++ functions and runs every thread of a launch
in a loop; kernels_host.cpp includes the kernel source and exports one launcher per kernel.
The library is built with the system C++ compiler into a folder the caller gives (pytest's
temporary folder), never into the repository. Float code is compiled without contraction
(-ffp-contract=off), as the device build is (--fmad=false), so every float operation rounds
once, like the reference's separate NumPy operations.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The device compile options the host build can honour, and their g++ equivalents.
HOST_OPTIONS = {"--fmad=false": "-ffp-contract=off"}
ARGUMENT_TYPES = {"P": ctypes.c_void_p, "i": ctypes.c_int, "f": ctypes.c_float}
_BUILT: dict[tuple[str, str], "HostKernels"] = {}


class NoCompiler(RuntimeError):
    """No C++ compiler here (the message says which were looked for)."""


def compiler() -> str:
    """$CXX, else g++, else c++."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise NoCompiler("no C++ compiler found ($CXX, g++, c++); install g++ (apt-get install g++) to run the "
                     "CUDA kernels on the host")


class HostKernels:
    """The host-compiled kernel library: launch(name, signature) gives a callable
    (grid, block, *args) over the kernel's SIGNATURES codes (P pointer as an int address)."""

    def __init__(self, path: Path):
        self.path = path
        self._library = ctypes.CDLL(str(path))
        self._library.host_launcher.restype = ctypes.c_void_p
        self._library.host_launcher.argtypes = [ctypes.c_char_p]
        self.half_to_float = self._library.host_half_bits_to_float
        self.half_to_float.restype, self.half_to_float.argtypes = ctypes.c_float, [ctypes.c_ushort]
        self.float_to_half = self._library.host_float_to_half_bits
        self.float_to_half.restype, self.float_to_half.argtypes = ctypes.c_ushort, [ctypes.c_float]

    def kernel(self, name: str, signature: str):
        address = self._library.host_launcher(name.encode())
        if not address:
            raise KeyError(f"{name} is not a kernel of the host build; add it to {HERE / 'kernels_host.cpp'}")
        dims = ctypes.c_uint * 3
        function = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                    *(ARGUMENT_TYPES[code] for code in signature))(address)

        def launch(grid, block, *args):
            if len(args) != len(signature):
                raise TypeError(f"{name} takes {len(signature)} arguments, got {len(args)}")
            function(dims(*grid), dims(*block), *args)
        return launch


def build(source: str, options, build_dir: Path) -> HostKernels:
    """`source` (kernels.cu's text) compiled with the host equivalents of the device `options`
    into `build_dir`; built once per source and folder."""
    flags = []
    for option in options:
        if option not in HOST_OPTIONS:
            raise ValueError(f"no host equivalent of the device compile option {option!r}")
        flags.append(HOST_OPTIONS[option])
    digest = hashlib.sha256("\0".join([source, *options]).encode()).hexdigest()[:16]
    key = (digest, str(build_dir))
    if key not in _BUILT:
        folder = Path(build_dir) / f"host_kernels_{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        kernel_file = folder / "kernels.cu"
        kernel_file.write_text(source)
        library = folder / "kernels_host.so"
        command = [compiler(), "-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Werror", *flags,
                   f"-I{HERE}", f'-DKERNELS_CU="{kernel_file}"', str(HERE / "kernels_host.cpp"), "-o", str(library)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"host build of the CUDA kernels failed:\n{' '.join(command)}\n{done.stderr}")
        _BUILT[key] = HostKernels(library)
    return _BUILT[key]
