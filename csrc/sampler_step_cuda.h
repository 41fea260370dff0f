// Host-side entry point of the CUDA sampler-step kernel. Plain C++: no CUDA headers needed to include it.
#pragma once

#include <cstdint>

namespace vasa {

// Launches the fused sampler step on `stream` (a cudaStream_t, nullptr = default stream). Device pointers:
//   branches: nb x n model outputs, branch-major, dtype 0 float32, 1 float16, 2 bfloat16
//   x_t, x0_prev, z: n float32 (x0_prev and z may be null); x_out: n float32; x0_out: n float32 or null.
// scales: nb - 1 host floats (guidance weights). a, b0, b1, sigma: the update's coefficients.
// Returns 0 on success, otherwise the CUDA error code of the launch.
int launch_sampler_step(const void* branches, int dtype, int64_t n, int nb, const float* scales, const float* x_t,
                        const float* x0_prev, const float* z, float a, float b0, float b1, float sigma, float* x_out,
                        float* x0_out, void* stream);

}  // namespace vasa
