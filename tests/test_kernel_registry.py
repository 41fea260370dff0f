"""Every registered kernel is accounted for: its operation's stages (vasa_engine.ops.OPERATIONS, which
`vasa-engine info` and the GPU suite read), a benchmark in benches/ and compile-gate specs; and the lists derived
from the table."""

import ast
import sys

import pytest
import torch

from conftest import REPO
from vasa_engine import ops
from vasa_engine.runtime import stage_backends

pytest.importorskip("triton")  # without Triton no kernel registers


@pytest.fixture(scope="module")
def kernels():
    registered = ops.registered_kernels()
    assert registered, "no kernel registered although Triton is installed"
    return registered


def test_every_operation_has_stages_from_the_known_ones():
    for name, op in ops.OPERATIONS.items():
        assert op.stages and set(op.stages) <= set(ops.STAGES), (name, op.stages)


def test_every_registered_kernel_serves_a_stage(kernels):
    missing = sorted(set(kernels) - set(ops.OPERATIONS))
    assert not missing, f"kernels registered for operations that ops.OPERATIONS does not list: {missing}"


def test_every_registered_kernel_has_a_benchmark(kernels):
    for name in kernels:
        path = REPO / "benches" / ops.OPERATIONS[name].bench
        assert path.is_file(), f"{name}: no benchmark file {path}"
        tests = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}
        assert f"test_{name}" in tests, f"{name}: {path.name} has no test_{name}"


def test_every_registered_kernel_has_compile_gate_specs(kernels):
    for name, fn in kernels.items():
        module = sys.modules[fn.__module__]
        assert callable(getattr(module, "aot_specs", None)), f"{name}: {module.__name__} declares no aot_specs()"
        specs = module.aot_specs()
        assert specs, f"{name}: {module.__name__}.aot_specs() returned no specs"
        assert all(spec["shapes"] for spec in specs)


def test_stage_lists_come_from_the_table(kernels):
    stages = ops.stage_operations()
    assert list(stages) == list(ops.STAGES)
    assert {(s, n) for s, names in stages.items() for n in names} == {
        (s, n) for n, op in ops.OPERATIONS.items() for s in op.stages}
    assert set(ops.kernel_benches()) == {op.bench for op in ops.OPERATIONS.values()}
    shown = stage_backends(torch.device("cpu"), "kernels")
    for stage, names in stages.items():
        assert shown[stage] == f"triton kernels ({', '.join(n for n in names if n in kernels)}) + pytorch"
    assert stage_backends(torch.device("cpu"), "reference")["renderer"] == "pytorch (reference)"
