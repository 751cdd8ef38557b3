"""Build hook for the optional native walk (ovmftool/scan/_walk.c); all metadata is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and the scanner
uses its pure-Python walk (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ovmftool.scan._walk", ["ovmftool/scan/_walk.c"], optional=True, extra_compile_args=["-O2", "-std=c11"]
        )
    ]
)
