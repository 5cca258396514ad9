"""Builds the runtime's C ops (runtime.ops._ops); all other metadata lives in pyproject.toml.

The extension is optional: where it cannot be compiled the install still succeeds and
runtime.ops falls back to its NumPy reference with a warning.
"""
import numpy
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "runtime.ops._ops",
            sources=["runtime/ops/_ops.c"],
            include_dirs=[numpy.get_include()],
            # Portable flags only (no -march=native: the build machine is not the vehicle).
            # -ffp-contract=off keeps float results identical to the NumPy reference;
            # -fno-trapping-math (no FP exception flags are read) lets branch-free selects vectorise.
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ],
)
