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


def _examples(device):
    """Small, odd-shaped arguments of every operation, in the CUDA dtype (float32 where the op takes it)."""
    h = torch.float16
    q = torch.randn(2, 3, 37, 32, dtype=h, device=device)
    return {
        "attention": (q, q.clone(), q.clone()),
        "add_layer_norm": (torch.randn(5, 7, 48, dtype=h, device=device), torch.randn(5, 7, 48, dtype=h, device=device),
                           torch.nn.LayerNorm(48).to(device, h)),
        "add_embeddings": (torch.randn(2, 9, 40, dtype=h, device=device), torch.randn(11, 40, dtype=h, device=device),
                           torch.randn(2, 1, 40, dtype=h, device=device)),
        "dense_motion_input": (torch.randn(2, 3, 4, 5, 6, dtype=h, device=device),
                               torch.rand(4, 5, 6, 3, device=device) * 2 - 1, torch.randn(2, 5, 3, device=device),
                               torch.randn(2, 5, 3, device=device)),
        "grid_sample_3d": (torch.randn(2, 3, 4, 5, 6, dtype=h, device=device),
                           torch.rand(2, 3, 5, 7, 3, device=device) * 2 - 1),
        "spade_modulate": (torch.randn(2, 5, 9, 11, dtype=h, device=device),
                           torch.randn(2, 5, 9, 11, dtype=h, device=device),
                           torch.randn(2, 5, 9, 11, dtype=h, device=device), 0.2),
    }


def _reference(name, args):
    if name == "add_layer_norm":
        x, r, norm = args
        return ops.add_layer_norm_reference(x, r, norm.weight, norm.bias, norm.eps)
    return getattr(ops, f"{name}_reference")(*args)


def test_every_kernel_is_a_library_operator_with_a_fake_implementation(kernels):
    """On fake CUDA tensors every kernel runs (its operator's fake implementation: nothing is computed) and gives the
    reference's shape, dtype and device; each call is one call of the operator named after the operation."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vasa_engine import backend
    from vasa_engine.tracing.fake_cuda import DEVICE, guard_free_bindings
    from vasa_engine.tracing.watch import DeviceWatch

    for name in kernels:
        assert hasattr(torch.ops.vasa_engine, name), f"{name}: no operator vasa_engine::{name}"
    watch = DeviceWatch()
    with guard_free_bindings(), FakeTensorMode(allow_non_fake_inputs=True), watch, torch.no_grad():
        for name, args in _examples(DEVICE).items():
            if name not in kernels:
                continue
            watch.kernel_calls.clear()
            with backend.use("kernels"):
                got = getattr(ops, name)(*args)
            assert watch.kernel_calls == {name: 1}, (name, watch.kernel_calls)
            want = _reference(name, args)
            assert (got.shape, got.dtype, got.device) == (want.shape, want.dtype, want.device), name


def test_a_kernel_launch_refuses_tensors_on_two_devices():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vasa_engine.tracing.fake_cuda import DEVICE, guard_free_bindings

    gs = pytest.importorskip("vasa_engine.kernels.grid_sample")
    with guard_free_bindings(), FakeTensorMode(allow_non_fake_inputs=True):
        volume = torch.randn(1, 4, 3, 5, 7, device=DEVICE).contiguous(memory_format=torch.channels_last_3d)
        grid = torch.rand(1, 2, 3, 4, 3) * 2 - 1  # on the CPU
        out = torch.empty(1, 4, 2, 3, 4, device=DEVICE).contiguous(memory_format=torch.channels_last_3d)
        with pytest.raises(RuntimeError, match="several devices"):
            gs._grid_sample_3d_op(volume, grid, out, False, False, 256)
