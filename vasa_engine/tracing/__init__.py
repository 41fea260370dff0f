"""The engine's full-size CUDA path traced on fake tensors, on a machine without a GPU (`vasa-engine gpu-check`).

Device, dtype and shape errors in CUDA-only code show up here instead of on a GPU: every stage of one engine
(preparation, audio, motion sampling with every guidance branch, the renderer's per-frame path) runs its own code
under PyTorch's fake tensors on "cuda:0" at full size, in the engine's CUDA dtype and under the kernels backend,
where each Triton kernel is a PyTorch library operator whose fake implementation checks its wrapper's launch contract.

    fake_cuda.py  fake CUDA tensors without CUDA: guard-free tensor bindings, fake modules, runtime calls set aside
    watch.py      a dispatch mode: live device bytes and their peak, operator contracts, kernel calls
    stages.py     the models of one engine and the stages, each calling the engine's own code
    check.py      running the stages, checking their outputs and kernels; one-line errors naming the stage
    report.py     the table and the memory estimate of one engine and of each additional stream

`vasa_engine.tracing.check.run_check` runs it; `vasa_engine.tracing.report.format_report` prints the result.
"""
