"""Package layout: vasa_engine.kernels comes from the top-level kernels/ folder, and no top-level `kernels` leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _probe(code: str, cwd: Path) -> dict:
    """Run `code` (which prints one JSON line) in a fresh interpreter whose working directory is `cwd`."""
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=cwd, env=_clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _is_ours(kernels_file: str) -> bool:
    path = Path(kernels_file).resolve()
    return path == (REPO / "kernels" / "__init__.py").resolve() or path.parent.parent.name == "vasa_engine"


def test_kernels_subpackage_in_this_process():
    from vasa_engine import kernels

    assert _is_ours(kernels.__file__), kernels.__file__
    ok, version = kernels.triton_available()
    assert isinstance(ok, bool) and (version is None) == (not ok)


def test_kernels_subpackage_and_no_top_level_kernels(tmp_path):
    """Away from the checkout (so only what is installed counts): vasa_engine.kernels imports, `kernels` does not."""
    info = _probe(
        "import importlib.util, json\n"
        "import vasa_engine.kernels as k\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(json.dumps({'file': k.__file__, 'name': k.__name__,\n"
        "                  'top': spec.origin if spec is not None else None}))\n",
        cwd=tmp_path,
    )
    assert info["name"] == "vasa_engine.kernels"
    assert _is_ours(info["file"]), info
    repo_kernels = (REPO / "kernels").resolve()
    if info["top"] is not None:
        assert Path(info["top"]).resolve().parent != repo_kernels, f"top-level `kernels` leaks: {info['top']}"
        assert "vasa_engine" not in Path(info["top"]).read_text(errors="replace"), info["top"]


def test_import_does_not_load_native(tmp_path):
    """`import vasa_engine.native` loads no extension: they load on first use."""
    info = _probe(
        "import json, sys\n"
        "import vasa_engine.native\n"
        "print(json.dumps([m for m in ('vasa_engine._C', 'vasa_engine._C_cuda') if m in sys.modules]))\n",
        cwd=tmp_path,
    )
    assert "vasa_engine._C" not in info and "vasa_engine._C_cuda" not in info


def test_kernels_fallback_finder(tmp_path):
    """install_kernels_fallback() resolves vasa_engine.kernels for a source tree that was never installed."""
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    info = _probe(
        "import importlib, importlib.util, json, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        # Only the plain source tree: no editable-install finder, no fallback finder added by an earlier import.
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(getattr(f, '__module__', ''))]\n"
        "import vasa_engine.native as n\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, n._SourceKernelsFinder)]\n"
        "sys.modules.pop('vasa_engine.kernels', None)\n"
        "before = importlib.util.find_spec('vasa_engine.kernels') is not None\n"
        "added = n.install_kernels_fallback()\n"
        "k = importlib.import_module('vasa_engine.kernels')\n"
        "again = n.install_kernels_fallback()\n"
        "print(json.dumps({'before': before, 'added': added, 'again': again, 'file': k.__file__}))\n",
        cwd=tmp_path,
    )
    assert info["before"] is False, "the plain source tree should not resolve vasa_engine.kernels by itself"
    assert info["added"] is True and info["again"] is False
    assert Path(info["file"]).resolve() == (REPO / "kernels" / "__init__.py").resolve()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("VASA_SLOW_TESTS") != "1" and os.environ.get("CI", "").lower() != "true",
                    reason="set VASA_SLOW_TESTS=1 (or CI=true) to build a wheel")
def test_wheel_contents(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    wheels = list(tmp_path.glob("vasa_engine-*.whl"))
    assert len(wheels) == 1, proc.stdout[-2000:]
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "vasa_engine/kernels/__init__.py" in names
    packages = {p.relative_to(REPO).as_posix() for p in (REPO / "vasa_engine").rglob("__init__.py")}
    assert packages <= set(names), f"packages missing from the wheel: {sorted(packages - set(names))}"
    assert not any(n.startswith("kernels/") for n in names), "top-level kernels/ in the wheel"
    assert any(n.startswith("vasa_engine/assets/") for n in names)
    assert any(n.startswith("vasa_engine/_C.") for n in names), "CPU extension missing from the wheel"
    assert not any(n.startswith(("csrc/", "tests/")) for n in names)
