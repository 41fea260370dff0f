// CUDA kernel: driving keypoints from absolute motion parameters, one thread per (frame, keypoint).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "keypoint_math.h"
#include "keypoints_cuda.h"

namespace vasa {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
driving_keypoints_kernel(const float* __restrict__ kp, const float* __restrict__ pitch,
                         const float* __restrict__ yaw, const float* __restrict__ roll,
                         const float* __restrict__ exp, const float* __restrict__ t,
                         const float* __restrict__ scale, float* __restrict__ out, int total,
                         int num_kp, int kp_shared) {
    // The launcher guarantees 3 * total < 2^31, so 32-bit indices are enough.
    const int i = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
    if (i >= total) return;
    const int b = i / num_kp;
    const int k = i - b * num_kp;
    const Mat3 r = pose_matrix(__ldg(pitch + b), __ldg(yaw + b), __ldg(roll + b));
    const float* kp_row = kp + (kp_shared ? k : i) * 3;
    float p[3] = {__ldg(kp_row), __ldg(kp_row + 1), __ldg(kp_row + 2)};
    float e[3] = {__ldg(exp + i * 3), __ldg(exp + i * 3 + 1), __ldg(exp + i * 3 + 2)};
    float o[3];
    driving_keypoint(r, p, e, __ldg(t + b * 3), __ldg(t + b * 3 + 1), __ldg(scale + b), o);
    out[i * 3] = o[0];
    out[i * 3 + 1] = o[1];
    out[i * 3 + 2] = o[2];
}

}  // namespace

int launch_driving_keypoints(const float* kp, const float* pitch, const float* yaw, const float* roll,
                             const float* exp, const float* t, const float* scale, float* out, int64_t batch,
                             int64_t num_kp, int64_t kp_batch, void* stream) {
    if (batch <= 0 || num_kp <= 0) return 0;
    if (batch > INT32_MAX / 3 / num_kp) return static_cast<int>(cudaErrorInvalidValue);
    const int64_t total = batch * num_kp;
    const unsigned int blocks = static_cast<unsigned int>((total + kThreads - 1) / kThreads);
    driving_keypoints_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        kp, pitch, yaw, roll, exp, t, scale, out, static_cast<int>(total), static_cast<int>(num_kp),
        kp_batch == 1 ? 1 : 0);
    return static_cast<int>(cudaGetLastError());
}

const char* cuda_error_string(int code) {
    static thread_local char buf[512];
    const cudaError_t err = static_cast<cudaError_t>(code);
    snprintf(buf, sizeof(buf), "%s: %s", cudaGetErrorName(err), cudaGetErrorString(err));
    return buf;
}

}  // namespace vasa
