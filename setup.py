"""Build script: package layout and the optional native extensions (metadata lives in pyproject.toml).

`vasa_engine.kernels` is installed from the top-level `kernels/` folder. The extensions `vasa_engine._C` (CPU)
and `vasa_engine._C_cuda` (CUDA, only where nvcc is found) are built with CMake and pybind11; when CMake, a C++
compiler or the build itself is missing or fails, a warning is printed and the package installs as pure Python.

Build in place without pip:  python setup.py build_ext --inplace
Environment: VASA_NO_NATIVE=1 skips the native build, VASA_NO_CUDA=1 skips the CUDA module,
CMAKE_CUDA_ARCHITECTURES overrides the GPU architectures, CMAKE_BUILD_PARALLEL_LEVEL the build jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_namespace_packages, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE_SOURCES = [
    "CMakeLists.txt",
    "csrc/array_checks.h",
    "csrc/bindings_cpu.cpp",
    "csrc/bindings_cuda.cpp",
    "csrc/build_info.h",
    "csrc/host_device.h",
    "csrc/keypoint_math.h",
    "csrc/keypoints_cuda.cu",
    "csrc/keypoints_cuda.h",
    "csrc/sampler_math.h",
    "csrc/sampler_step_cuda.cu",
    "csrc/sampler_step_cuda.h",
]


def _warn(message: str) -> None:
    print(f"WARNING: vasa_engine native extension: {message}", file=sys.stderr, flush=True)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _cxx_compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand.split()[0]):
            return cand
    return None


class CMakeExtension(Extension):
    """An extension module produced by the CMake target of the same short name."""

    def __init__(self, name: str):
        # The sources are listed so that an sdist carries them; CMake, not setuptools, compiles them.
        super().__init__(name, sources=list(NATIVE_SOURCES))
        self.target = name.rsplit(".", 1)[-1]


class CMakeBuild(build_ext):
    """Builds every CMakeExtension with one CMake tree; a failure leaves the extension out with a warning."""

    def build_extensions(self) -> None:
        built = self._build_all()
        # Only what was built is copied (in place / editable) and reported as an output of the build.
        self.extensions[:] = [ext for ext in self.extensions if ext.name in built]

    def _build_all(self) -> set[str]:
        if _truthy("VASA_NO_NATIVE"):
            _warn("skipped (VASA_NO_NATIVE is set); installing pure Python")
            return set()
        cmake = shutil.which("cmake")
        if cmake is None:
            _warn("cmake not found; installing pure Python (PyTorch fallbacks will be used)")
            return set()
        if _cxx_compiler() is None:
            _warn("no C++ compiler found; installing pure Python (PyTorch fallbacks will be used)")
            return set()
        try:
            import pybind11
        except ImportError:
            _warn("pybind11 is not importable; installing pure Python (PyTorch fallbacks will be used)")
            return set()

        build_dir = Path(self.build_temp).resolve() / "cmake"
        out_dir = build_dir / "modules"
        base_args = [
            f"-DVASA_OUTPUT_DIR={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("CMAKE_CUDA_ARCHITECTURES"):
            base_args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CMAKE_CUDA_ARCHITECTURES']}")
        targets = {ext.target: ext for ext in self.extensions}
        want_cuda = "_C_cuda" in targets and not _truthy("VASA_NO_CUDA")
        built: set[str] = set()
        self._failures: list[str] = []

        def configure(with_cuda: bool) -> bool:
            # A fresh cache each time: CUDA detection results must not leak between the two attempts.
            shutil.rmtree(build_dir, ignore_errors=True)
            build_dir.mkdir(parents=True, exist_ok=True)
            args = [*base_args, f"-DVASA_WITH_CUDA={'ON' if with_cuda else 'OFF'}"]
            return self._run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], "configure")

        def build(target: str) -> bool:
            cmd = [cmake, "--build", str(build_dir), "--target", target, "--config", "Release"]
            if not os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL"):
                cmd += ["-j", str(os.cpu_count() or 1)]
            return self._run(cmd, f"build of {target}") and self._collect(out_dir, targets[target], built)

        def give_up() -> set[str]:
            _warn(f"the CPU module failed to build ({'; '.join(self._failures)}; see the CMake output above); "
                  + ("installing with the CUDA module only" if built
                     else "installing pure Python (PyTorch fallbacks will be used)"))
            return built

        if want_cuda:
            if configure(with_cuda=True):
                if not self._cuda_configured(build_dir):  # no usable CUDA compiler: CPU module only, as planned
                    return built if build("_C") else give_up()
                # The CUDA module goes first, so the CPU module's build_info() truthfully says whether it exists.
                if build("_C_cuda"):
                    return built if build("_C") else give_up()
            cuda_failure = "; ".join(self._failures)
            self._failures.clear()
            if configure(with_cuda=False) and build("_C"):
                _warn(f"the CUDA module failed to build ({cuda_failure}; see the CMake output above); "
                      "installed the CPU module only")
                return built
            return give_up()
        if configure(with_cuda=False) and build("_C"):
            return built
        return give_up()

    @staticmethod
    def _cuda_configured(build_dir: Path) -> bool:
        cache = build_dir / "CMakeCache.txt"
        if not cache.exists():
            return False
        for line in cache.read_text(errors="replace").splitlines():
            if line.startswith("VASA_CUDA_ENABLED:"):
                return line.split("=", 1)[-1].strip() == "1"
        return False

    def _collect(self, out_dir: Path, ext: CMakeExtension, built: set[str]) -> bool:
        dest = Path(self.get_ext_fullpath(ext.name))
        suffix = dest.name[len(ext.target):]
        src = out_dir / f"{ext.target}{suffix}"
        if not src.exists():
            found = sorted(p for p in out_dir.glob(f"{ext.target}.*") if p.suffix in {".so", ".pyd"})
            if not found:
                self._failures.append(f"CMake finished but {ext.target} was not produced in {out_dir}")
                return False
            src = found[0]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        built.add(ext.name)
        return True

    def _run(self, cmd: list[str], what: str) -> bool:
        print("vasa_engine:", " ".join(cmd), flush=True)
        try:
            subprocess.run(cmd, check=True, cwd=ROOT)
        except (OSError, subprocess.CalledProcessError) as exc:
            code = getattr(exc, "returncode", None)
            self._failures.append(f"CMake {what} failed" + (f" with exit code {code}" if code is not None else
                                                              f": {exc}"))
            return False
        return True


# assets/ holds data only; listing it (and any subfolder) as a package is how setuptools ships such folders.
assets = find_namespace_packages(where=str(ROOT), include=["vasa_engine.assets", "vasa_engine.assets.*"])
packages = find_packages(where=str(ROOT), include=["vasa_engine", "vasa_engine.*"])
packages = sorted({*packages, *assets, "vasa_engine.kernels"})

setup(
    packages=packages,
    package_dir={"vasa_engine.kernels": "kernels"},
    package_data={name: ["*"] for name in assets},
    ext_modules=[CMakeExtension("vasa_engine._C"), CMakeExtension("vasa_engine._C_cuda")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
