"""The kernel compile gate: every Triton kernel compiled ahead of time for sm_90a and sm_89 (no GPU), no spills,
HGMMA in the attention kernel's sm_90a build; the parsers of ptxas and disassembler output; the gate failing on a
spilling kernel and on a module that registers an op without AOT specs.

The compilation runs in a subprocess with TRITON_INTERPRET removed: this test process runs the kernels in Triton's
interpreter, where the jitted functions cannot be compiled.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from vasa_engine.ops import OPERATIONS

ARCHS = ("sm_90a", "sm_89")


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_gate(*args, timeout=1800):
    return subprocess.run([sys.executable, "-m", "vasa_engine.cli", "kernels", *map(str, args)], capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=timeout)


def _aot():
    pytest.importorskip("triton")
    from vasa_engine.kernels import _aot

    return _aot


# ------------------------------------------------------------------------------------------------ parsers
# Output captured from Triton 3.9.0's bundled tools on this project's kernels.

PTXAS_SM90A_SPILLING = """\
ptxas-blackwell info    : 11 bytes gmem
ptxas-blackwell info    : Compiling entry function '_attention_fwd' for 'sm_90a'
ptxas-blackwell info    : Function properties for _attention_fwd
    128 bytes stack frame, 124 bytes spill stores, 124 bytes spill loads
ptxas-blackwell info    : Used 255 registers, used 1 barriers, 128 bytes cumulative stack size
ptxas-blackwell info    : Compile time = 295.271 ms
"""

PTXAS_SM89_CMEM = """\
ptxas info    : 11 bytes gmem, 8 bytes cmem[4]
ptxas info    : Compiling entry function '_attention_fwd' for 'sm_89'
ptxas info    : Function properties for _attention_fwd
    72 bytes stack frame, 72 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 72 bytes cumulative stack size, 480 bytes cmem[0]
ptxas info    : Compile time = 304.161 ms
"""

PTXAS_CLEAN_SM90A = """\
ptxas-blackwell info    : 0 bytes gmem
ptxas-blackwell info    : Compiling entry function '_scale' for 'sm_90a'
ptxas-blackwell info    : Function properties for _scale
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas-blackwell info    : Used 19 registers, used 0 barriers
ptxas-blackwell info    : Compile time = 7.213 ms
"""

# A kernel calling a noinline function: the callee's properties come after the entry's "Used" line.
PTXAS_WITH_CALLEE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_outer' for 'sm_89'
ptxas info    : Function properties for _outer
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 392 bytes cmem[0]
ptxas info    : Compile time = 26.042 ms
ptxas info    : Function properties for __main___$__helper__Pfp32_i32
    16 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
"""

PTXAS_STATIC_SMEM = """\
ptxas-blackwell info    : 0 bytes gmem
ptxas-blackwell info    : Compiling entry function 'static_smem_demo' for 'sm_90a'
ptxas-blackwell info    : Function properties for static_smem_demo
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas-blackwell info    : Used 10 registers, used 1 barriers, 4096 bytes smem
ptxas-blackwell info    : Compile time = 23.727 ms
"""

NVDISASM_SM90A = """\
	.target	sm_90a
        /*0000*/ 	.byte	0xff, 0xff, 0xff, 0xff, 0x24, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff
        /*0044*/ 	.dword	_attention_fwd
        /*0190*/              @!P1 IMAD.IADD R0, R0, 0x1, -R5 ;
        /*0200*/               @P0 VIADD R250, R250, 0x1 ;
        /*4f70*/                   WARPGROUP.ARRIVE ;
        /*4f80*/                   HGMMA.64x64x16.F32 R24, gdesc[UR4], RZ, !UPT ;
        /*4f90*/                   UMOV UR8, UR13 ;
        /*4fd0*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8], R24 ;
        /*5020*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8], R24 ;
        /*5030*/                   STL [R1+0x44], R12 ;
"""

# (cuobjdump pads each line to a fixed width; the padding is shortened here.)
CUOBJDUMP_SASS_SM89 = """\
        /*0380*/                   STL [R1+0x44], R12 ;   /* 0x0000440c01007387 */
                                        /* 0x000fe20000100800 */
        /*4e30*/               @P5 LDG.E.U16 R31, [R56.64] ;   /* 0x00000004381f5981 */
                                        /* 0x0000a2000c1e1500 */
        /*4e40*/                   HMMA.16816.F32 R100, R68, R60, RZ ;   /* 0x0000003c4464723c */
                                        /* 0x002fe200000018ff */
        /*4e50*/                   LOP3.LUT R47, R116, 0x40, RZ, 0x3c, !PT ;   /* 0x00000040742f7812 */
                                        /* 0x000fca00078e3cff */
        /*4e60*/                   LDSM.16.M88.4 R96, [R47+0x3000] ;   /* 0x003000002f60783b */
"""

CUOBJDUMP_RESOURCES = """\

Resource usage:
 Common:
  GLOBAL:0
 Function _spill:
  REG:56 STACK:1992 SHARED:1024 LOCAL:0 CONSTANT[0]:568 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parse_ptxas_spilling_sm90a():
    info = _aot().parse_ptxas_log(PTXAS_SM90A_SPILLING)
    assert (info["entry"], info["registers"], info["spill_stores"], info["spill_loads"], info["stack"],
            info["static_smem"], info["barriers"]) == ("_attention_fwd", 255, 124, 124, 128, 0, 1)


def test_parse_ptxas_sm89_ignores_cmem_and_cumulative_stack():
    info = _aot().parse_ptxas_log(PTXAS_SM89_CMEM)
    assert (info["registers"], info["spill_stores"], info["spill_loads"], info["stack"], info["static_smem"]) == \
        (255, 72, 8, 72, 0)


def test_parse_ptxas_clean_kernel():
    info = _aot().parse_ptxas_log(PTXAS_CLEAN_SM90A)
    assert (info["registers"], info["spill_stores"], info["spill_loads"], info["stack"]) == (19, 0, 0, 0)
    assert info["warnings"] == []


def test_parse_ptxas_counts_spills_of_called_functions():
    info = _aot().parse_ptxas_log(PTXAS_WITH_CALLEE)
    assert info["entry"] == "_outer" and info["registers"] == 10 and info["stack"] == 0
    assert (info["spill_stores"], info["spill_loads"]) == (12, 12)
    assert set(info["functions"]) == {"_outer", "__main___$__helper__Pfp32_i32"}


def test_parse_ptxas_static_shared_memory():
    info = _aot().parse_ptxas_log(PTXAS_STATIC_SMEM)
    assert (info["registers"], info["static_smem"], info["barriers"]) == (10, 4096, 1)


def test_count_sass_nvdisasm():
    counts = _aot().count_sass(NVDISASM_SM90A)
    assert (counts["HGMMA"], counts["HMMA"], counts["local"], counts["instructions"]) == (3, 0, 1, 8)
    assert counts["opcodes"]["IMAD"] == 1 and counts["opcodes"]["WARPGROUP"] == 1


def test_count_sass_cuobjdump():
    counts = _aot().count_sass(CUOBJDUMP_SASS_SM89)
    assert (counts["HGMMA"], counts["HMMA"], counts["local"], counts["instructions"]) == (0, 1, 1, 5)


def test_parse_resource_usage_and_versions():
    aot = _aot()
    assert aot.parse_resource_usage(CUOBJDUMP_RESOURCES) == {
        "_spill": {"registers": 56, "stack": 1992, "shared": 1024, "local": 0}}
    assert aot.parse_tool_version("ptxas: NVIDIA (R) Ptx optimizing assembler\nCuda compilation tools, release 13.4, "
                                  "V13.4.59\nBuild cuda_13.4.r13.4/compiler.38657139_0\n") == "13.4.59"


def test_compile_spec_refuses_interpreted_kernels():
    aot = _aot()
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("this process compiles for real (TRITON_INTERPRET unset)")
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(X, Y, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(Y + offs, tl.load(X + offs))

    spec = dict(name="copy", kernel=_copy, signature={"X": "*fp32", "Y": "*fp32"}, constexprs={"BLOCK": 64},
                num_warps=4, num_stages=1, shapes="-")
    with pytest.raises(aot.AOTError, match="TRITON_INTERPRET"):
        aot.compile_spec(spec, "sm_90a")


# ------------------------------------------------------------------------------------------------ the gate

SPILLING_MODULE = textwrap.dedent('''
    import triton
    import triton.language as tl

    from vasa_engine import ops


    @triton.jit
    def _keeps_block_live(X, Y, N, BLOCK: tl.constexpr):
        rows = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)  # 16K fp32 values in one warp: cannot fit in registers
        for i in range(N):
            x = tl.load(X + i * BLOCK + rows)
            acc = acc * x[:, None] + x[None, :]
        tl.store(Y + rows[:, None] * BLOCK + rows[None, :], acc)


    @ops.register_kernel("spill_demo")
    def spill_demo(x):
        return NotImplemented


    def aot_specs():
        return [dict(name="spill_demo_block128", kernel=_keeps_block_live,
                     signature={"X": "*fp32", "Y": "*fp32", "N": "i32"}, constexprs={"BLOCK": 128},
                     num_warps=1, num_stages=1, shapes="a 128x128 fp32 block live in one warp")]
''')

NO_SPECS_MODULE = textwrap.dedent('''
    from vasa_engine import ops


    @ops.register_kernel("no_specs_demo")
    def no_specs_demo(x):
        return NotImplemented
''')


@pytest.mark.slow
def test_gate_fails_on_spills_and_missing_specs(tmp_path):
    pytest.importorskip("triton")
    spilling = tmp_path / "spill_demo.py"
    spilling.write_text(SPILLING_MODULE)
    no_specs = tmp_path / "no_specs_demo.py"
    no_specs.write_text(NO_SPECS_MODULE)
    report_path = tmp_path / "report.json"
    res = run_gate("--extra-module", spilling, "--extra-module", no_specs, "--only", "spill_demo.py",
                   "--only", "no_specs_demo.py", "--json", report_path)
    assert res.returncode == 1, res.stdout + res.stderr
    for arch in ARCHS:
        assert f"FAIL spill_demo.py (extra) spill_demo_block128 {arch}: spills:" in res.stdout, res.stdout
    assert "FAIL no_specs_demo.py (extra): no AOT specs declared" in res.stdout, res.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    rows = [r for r in report["rows"] if r["spec"] == "spill_demo_block128"]
    assert sorted(r["arch"] for r in rows) == sorted(ARCHS)
    assert all(r["spill_stores"] > 0 and r["spill_loads"] > 0 and not r.get("error") for r in rows)
    assert report["ops"]["spill_demo"] == "spill_demo.py (extra)" and "no_specs_demo" in report["ops"]
    assert not list(tmp_path.glob(".report.json.*"))  # written atomically, no temp file left


@pytest.mark.parametrize("args, expected", [
    (["--extra-module", "{tmp}/missing.py"], "--extra-module"),
    (["--arch", "sm_80"], "sm_80"),
    (["--json", "{tmp}/no-such-folder/r.json"], "does not exist"),
])
def test_gate_bad_arguments_exit_2(tmp_path, capsys, args, expected):
    from vasa_engine.cli import main

    try:
        code = main(["kernels", *(a.format(tmp=tmp_path) for a in args)])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_every_engine_kernel_compiles_for_sm90a_and_sm89_without_spills(tmp_path):
    pytest.importorskip("triton")
    report_path = tmp_path / "kernels.json"
    res = run_gate("--json", report_path)
    assert report_path.is_file(), res.stdout + res.stderr
    report = json.loads(report_path.read_text())
    fails = [f"{v['module']} {v['spec'] or ''} {v['arch'] or ''}: {v['reason']}" for v in report["verdicts"]]
    assert res.returncode == 0 and report["passed"], "\n".join(fails) or res.stdout + res.stderr

    # Every engine operation has a Triton kernel, gated here.
    missing = [op for op in OPERATIONS if op not in report["ops"]]
    assert not missing, f"no kernel registered for {missing}; registered: {report['ops']}"
    modules = {m["label"]: m for m in report["modules"]}
    for op, owner in report["ops"].items():
        assert owner in modules and modules[owner]["specs"], f"op {op} ({owner}) declares no AOT specs"

    # Every spec compiled for both architectures, without spills.
    built = {}
    for row in report["rows"]:
        assert not row.get("error"), f"{row['spec']} {row['arch']}: {row['error']}"
        built.setdefault((row["module"], row["spec"]), set()).add(row["arch"])
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"{row['spec']} {row['arch']} spills"
        assert row["registers"] and 0 < row["registers"] <= 255
    for m in report["modules"]:
        for spec in m["specs"]:
            archs = built.get((m["module"], spec))
            assert archs == set(ARCHS), f"{m['label']} {spec}: built for {archs}"

    # The attention kernel's half-precision sm_90a builds use Hopper's warpgroup MMA.
    attention = [r for r in report["rows"] if "attention" in r["ops"] and r["expect_hgmma"]]
    assert attention and {r["arch"] for r in attention} == {"sm_90a"}
    assert all(r["hgmma"] > 0 for r in attention), [(r["spec"], r["hgmma"]) for r in attention]
