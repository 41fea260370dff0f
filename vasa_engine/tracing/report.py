"""What `vasa-engine gpu-check` prints: the outputs each traced stage produced (shape, dtype, device), the kernels it
ran, and an estimate of the device memory of one engine and of each additional stream.

The memory estimate comes from the fake tensors' sizes, each rounded as the CUDA caching allocator rounds it; the
CUDA context, cuBLAS and cuDNN workspaces and allocator fragmentation are not in it.

- One engine: its weights; one memory pool per CUDA graph the engine captures (the renderer's per-frame path, the
  sampler loop), as large as the peak of the stage it captures, since the pool keeps that memory between replays;
  the frame renderer's static copy of the current avatar, which the graphs read; and the peak of the largest stage
  run eagerly (preparation, a batch of audio windows, or a captured stage in its capture's warm-up runs), whose
  blocks the allocator keeps cached for the next eager work.
- Each additional stream: its own avatar (feature volume and keypoints), its start noise and context windows, the
  audio encoder's activations on one chunk's span (every stream encodes its own audio, in its own thread), and one
  batch of frames on the device until it is copied to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

from .check import CheckResult
from .stages import AUDIO_CHUNK, FRAMES, PREPARATION, STAGE_NAMES

MIB = 2**20


@dataclass
class MemoryEstimate:
    weights: dict[str, int]
    pools: dict[str, int]  # CUDA graph -> bytes its pool keeps
    avatar: int  # the frame renderer's static copy of one avatar
    eager: tuple[str, int]  # the stage with the largest peak run eagerly, and that peak
    stream: dict[str, int]  # what each additional stream adds

    @property
    def engine(self) -> int:
        return sum(self.weights.values()) + sum(self.pools.values()) + self.avatar + self.eager[1]

    @property
    def per_stream(self) -> int:
        return sum(self.stream.values())


def estimate(result: CheckResult) -> MemoryEstimate:
    stages = result.stages
    pools: dict[str, int] = {}
    for stage in stages.values():
        if stage.graph is not None:
            pools[stage.graph] = max(pools.get(stage.graph, 0), stage.peak)
    eager = max(((name, stage.peak) for name, stage in stages.items()), key=lambda item: item[1])
    avatar = stages[PREPARATION].kept
    frames = sum(out.nbytes for out in stages[FRAMES].outputs)
    stream = {"avatar": avatar, "start noise and context windows": result.stream_context,
              "audio chunk": stages[AUDIO_CHUNK].peak, f"frames in flight (one batch of {result.batch})": frames}
    return MemoryEstimate(dict(result.weights), pools, avatar, eager, stream)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f}"


def _parts(items: dict[str, int]) -> str:
    return ", ".join(f"{name} {_mib(n)}" for name, n in items.items())


def _table(rows: list[tuple[str, ...]], right: set[int] = frozenset()) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                             for c, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def format_report(result: CheckResult) -> str:
    dtype = str(result.dtype).replace("torch.", "")
    lines = ["gpu-check: the engine's full-size CUDA path, traced on fake tensors on cuda:0 (no GPU used)",
             f"  {dtype} (keypoint maths, retargeting MLPs, warp coordinates and sampler arithmetic in float32), "
             f"kernels backend, frames in batches of {result.batch}",
             "  not traced: CUDA streams, events, graph capture and synchronize, and the native extension's CUDA "
             "launches (their PyTorch references run in their place)", ""]
    rows = [("stage", "output", "shape", "dtype", "device", "peak MiB")]
    for stage in result.stages.values():
        for i, out in enumerate(stage.outputs):
            rows.append((stage.name if i == 0 else "", out.name, str(out.shape),
                         str(out.dtype).replace("torch.", ""), str(out.device), _mib(stage.peak) if i == 0 else ""))
    lines += _table(rows, right={5})
    lines += ["", "kernels run (calls):"]
    for stage in result.stages.values():
        calls = ", ".join(f"{op} {n}" for op, n in sorted(stage.kernels.items())) or "none (no kernel operation)"
        lines.append(f"  {stage.name}: {calls}")
    if set(result.stages) != set(STAGE_NAMES):
        return "\n".join(lines + ["", "device memory: not estimated (it takes every stage)"])
    memory = estimate(result)
    lines += ["", "device memory, estimated from the tensors' sizes (without the CUDA context, cuBLAS/cuDNN "
                  "workspaces and fragmentation):"]
    lines += _table([
        ("weights", _mib(sum(memory.weights.values())), "MiB", _parts(memory.weights)),
        ("CUDA graph pools", _mib(sum(memory.pools.values())), "MiB", _parts(memory.pools)),
        ("the frame renderer's avatar copy", _mib(memory.avatar), "MiB", ""),
        ("the largest eager run", _mib(memory.eager[1]), "MiB",
         memory.eager[0] + (" (its capture's warm-up)" if result.stages[memory.eager[0]].graph else "")),
        ("one engine", _mib(memory.engine), "MiB", "the sum of the above"),
        ("each additional stream", _mib(memory.per_stream), "MiB", _parts(memory.stream)),
    ], right={1})
    return "\n".join(lines)
