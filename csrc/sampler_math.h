// Sampler-step arithmetic shared by the CPU extension and the CUDA kernel.
//
// One reverse-diffusion step on an x0-predicting model, for one latent element i:
//   guidance:  the model ran once on a batch of nb branches (branch 0 with every condition dropped, branch k
//              adding the k-th condition); x0 = b_0 + sum_k s_k (b_k - b_{k-1})  (incremental guidance; nb = 1
//              means no guidance: x0 = b_0)
//   update:    x_prev = ((a x_t + b0 x0) + b1 x0_prev) + sigma z
// which covers every sampler the engine runs:
//   DDPM (ancestral):     a = c0, b0 = c1, b1 = 0, sigma = posterior std (z Gaussian, 0 at the last step)
//   DDIM:                 a = sqrt(1 - ab_prev - sigma^2) / sqrt(1 - ab_t), b0 = sqrt(ab_prev) - a sqrt(ab_t), b1 = 0
//   DPM-Solver++(2M):     a = sigma_prev / sigma_t, b0 and b1 the multistep weights of x0 and the previous x0
// The operation order matches the PyTorch reference in vasa_engine/sampling.py. Branch outputs may be float32,
// float16 or bfloat16 (converted exactly to float32 first); the latents and the result are float32.
//
// The header compiles with nvcc (functions become __host__ __device__) and with a plain C++ compiler.
#pragma once

#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace vasa {

enum class Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kMaxBranches = 8;

struct StepCoefs {
    float a;      // weight of x_t
    float b0;     // weight of this step's x0
    float b1;     // weight of the previous step's x0 (DPM-Solver++(2M))
    float sigma;  // weight of the noise
};

struct Guidance {
    int branches;                   // 1 .. kMaxBranches
    float scale[kMaxBranches - 1];  // scale[k - 1] weighs b_k - b_{k-1}
};

VASA_HD float bits_as_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

// IEEE binary16 -> float32, exact (subnormals, infinities and NaN included).
VASA_HD float half_bits_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) return bits_as_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
        if (mantissa == 0) return bits_as_float(sign);
        exponent = 127 - 15 + 1;  // normalize the subnormal: value = mantissa * 2^-24
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --exponent;
        }
        return bits_as_float(sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13));
    }
    return bits_as_float(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

// bfloat16 -> float32, exact: the upper half of a float32.
VASA_HD float bf16_bits_to_float(uint16_t b) { return bits_as_float(static_cast<uint32_t>(b) << 16); }

VASA_HD float load_as_float(const void* data, Dtype dtype, int64_t index) {
    switch (dtype) {
        case Dtype::kFloat16:
            return half_bits_to_float(static_cast<const uint16_t*>(data)[index]);
        case Dtype::kBFloat16:
            return bf16_bits_to_float(static_cast<const uint16_t*>(data)[index]);
        default:
            return static_cast<const float*>(data)[index];
    }
}

// The guided x0 of element i from nb branch outputs laid out branch-major (branch k at offset k * n).
VASA_HD float guided_x0(const void* branches, Dtype dtype, int64_t n, int64_t i, const Guidance& g) {
    float prev = load_as_float(branches, dtype, i);
    float x0 = prev;
    for (int k = 1; k < g.branches; ++k) {
        const float cur = load_as_float(branches, dtype, k * n + i);
        x0 = x0 + g.scale[k - 1] * (cur - prev);
        prev = cur;
    }
    return x0;
}

VASA_HD float step_update(float x_t, float x0, float x0_prev, float z, const StepCoefs& c) {
    return ((c.a * x_t + c.b0 * x0) + c.b1 * x0_prev) + c.sigma * z;
}

// One element of the fused step. x0_prev and z may be null (read as 0); x0_out may be null (not stored).
VASA_HD void sampler_step_element(const void* branches, Dtype dtype, int64_t n, int64_t i, const Guidance& g,
                                  const float* x_t, const float* x0_prev, const float* z, const StepCoefs& c,
                                  float* x_out, float* x0_out) {
    const float x0 = guided_x0(branches, dtype, n, i, g);
    const float prev = x0_prev ? x0_prev[i] : 0.0f;
    const float noise = z ? z[i] : 0.0f;
    const float x = step_update(x_t[i], x0, prev, noise, c);
    if (x0_out) x0_out[i] = x0;
    x_out[i] = x;
}

}  // namespace vasa
