"""Extension list only: every pyx/<mechanism>.pyx builds netprobe._<mechanism>.

NETPROBE_EXTENSIONS="a,b" builds only those (a developer shortcut while one
extension is being edited); the default builds all.
"""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# Top-level pyx/*.pyx only: pyx/<mechanism>/ holds files an extension `include`s.
EXTENSIONS = sorted(p.stem for p in (Path(__file__).parent / "pyx").glob("*.pyx"))
ONLY = [n for n in os.environ.get("NETPROBE_EXTENSIONS", "").split(",") if n]

setup(
    ext_modules=cythonize(
        [
            Extension(f"netprobe._{name}", [f"pyx/{name}.pyx"], include_dirs=["pyx/includes"],
                      extra_compile_args=["-O2"])
            for name in (ONLY or EXTENSIONS)
        ],
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True},
        include_path=[str(Path(__file__).parent / "pyx" / "includes"), str(Path(__file__).parent / "pyx")],
        build_dir="build/cython",
    ),
)
