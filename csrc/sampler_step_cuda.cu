// CUDA kernel: the fused sampler step (guidance over every branch + the DDPM / DDIM / DPM-Solver++(2M) update)
// in one pass over the latents, one thread per element.
#include <cuda_runtime.h>

#include <cstdint>

#include "sampler_math.h"
#include "sampler_step_cuda.h"

namespace vasa {
namespace {

constexpr int kStepThreads = 256;

__global__ void __launch_bounds__(kStepThreads)
sampler_step_kernel(const void* __restrict__ branches, Dtype dtype, int64_t n, Guidance guidance,
                    const float* __restrict__ x_t, const float* __restrict__ x0_prev, const float* __restrict__ z,
                    StepCoefs coefs, float* __restrict__ x_out, float* __restrict__ x0_out) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kStepThreads + threadIdx.x;
    if (i >= n) return;
    sampler_step_element(branches, dtype, n, i, guidance, x_t, x0_prev, z, coefs, x_out, x0_out);
}

}  // namespace

int launch_sampler_step(const void* branches, int dtype, int64_t n, int nb, const float* scales, const float* x_t,
                        const float* x0_prev, const float* z, float a, float b0, float b1, float sigma, float* x_out,
                        float* x0_out, void* stream) {
    if (n <= 0) return 0;
    if (nb < 1 || nb > kMaxBranches || dtype < 0 || dtype > 2) return static_cast<int>(cudaErrorInvalidValue);
    Guidance guidance{};
    guidance.branches = nb;
    for (int k = 0; k + 1 < nb; ++k) guidance.scale[k] = scales[k];
    const StepCoefs coefs{a, b0, b1, sigma};
    const unsigned int blocks = static_cast<unsigned int>((n + kStepThreads - 1) / kStepThreads);
    sampler_step_kernel<<<blocks, kStepThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        branches, static_cast<Dtype>(dtype), n, guidance, x_t, x0_prev, z, coefs, x_out, x0_out);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace vasa
