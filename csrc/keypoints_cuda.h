// Host-side entry point of the CUDA driving-keypoint kernel. Plain C++: no CUDA headers needed to include it.
#pragma once

#include <cstdint>

namespace vasa {

// Launches one thread per (frame, keypoint) on `stream` (a cudaStream_t, nullptr = default stream).
// All pointers are device pointers to contiguous float32 data:
//   kp (kp_batch, K, 3) with kp_batch 1 (shared by all frames) or B; pitch, yaw, roll, scale (B,);
//   exp (B, K, 3); t (B, 3); out (B, K, 3).
// Returns 0 on success, otherwise the CUDA error code of the launch (see cuda_error_string).
int launch_driving_keypoints(const float* kp, const float* pitch, const float* yaw, const float* roll,
                             const float* exp, const float* t, const float* scale, float* out, int64_t batch,
                             int64_t num_kp, int64_t kp_batch, void* stream);

// Name and description of a CUDA error code, e.g. "cudaErrorNoKernelImageForDevice: no kernel image ...".
const char* cuda_error_string(int code);

}  // namespace vasa
