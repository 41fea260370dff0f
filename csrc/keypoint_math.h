// Driving-keypoint arithmetic shared by the CPU extension and the CUDA kernel.
//
// For one frame and one keypoint:
//   R = (Rz Ry Rx)^T from (pitch, yaw, roll) in degrees, applied to row vectors (x @ R)
//   x = scale * (kp @ R + exp)
//   x.x += t.x; x.y += t.y            (t.z is never used)
//
// The header compiles with nvcc (functions become __host__ __device__) and with a plain C++ compiler.
#pragma once

#include <cmath>

#include "host_device.h"

namespace vasa {

// Row-major 3x3 matrix M = Rz Ry Rx. Since R = M^T, (kp @ R)_j = sum_i kp_i M[j][i] = (M kp)_j.
struct Mat3 {
    float m[9];
};

// sin and cos of an angle in degrees. The angle is first reduced exactly to [-360, 360] (fmod is exact),
// so the conversion to radians loses nothing for large inputs.
VASA_HD void sincos_degrees(float deg, float* s, float* c) {
#if defined(__CUDA_ARCH__)
    // sincospif(x) = sin(pi x), cos(pi x): no radian conversion, no slow argument-reduction path.
    sincospif(fmodf(deg, 360.0f) / 180.0f, s, c);
#else
    const double r = static_cast<double>(std::fmod(deg, 360.0f)) * (M_PI / 180.0);
    *s = static_cast<float>(std::sin(r));
    *c = static_cast<float>(std::cos(r));
#endif
}

// M = Rz(roll) Ry(yaw) Rx(pitch), angles in degrees.
VASA_HD Mat3 pose_matrix(float pitch_deg, float yaw_deg, float roll_deg) {
    float sp, cp, sy, cy, sr, cr;
    sincos_degrees(pitch_deg, &sp, &cp);
    sincos_degrees(yaw_deg, &sy, &cy);
    sincos_degrees(roll_deg, &sr, &cr);
    Mat3 r;
    r.m[0] = cr * cy;
    r.m[1] = cr * sy * sp - sr * cp;
    r.m[2] = cr * sy * cp + sr * sp;
    r.m[3] = sr * cy;
    r.m[4] = sr * sy * sp + cr * cp;
    r.m[5] = sr * sy * cp - cr * sp;
    r.m[6] = -sy;
    r.m[7] = cy * sp;
    r.m[8] = cy * cp;
    return r;
}

// One keypoint: out = scale * (kp @ R + exp) + (tx, ty, 0). kp, exp, out point at 3 floats each.
// All inputs are read before out is written, so out may alias exp.
VASA_HD void driving_keypoint(const Mat3& r, const float* kp, const float* exp, float tx, float ty, float scale,
                              float* out) {
    const float x = kp[0], y = kp[1], z = kp[2];
    const float ex = exp[0], ey = exp[1], ez = exp[2];
    const float o0 = scale * (r.m[0] * x + r.m[1] * y + r.m[2] * z + ex) + tx;
    const float o1 = scale * (r.m[3] * x + r.m[4] * y + r.m[5] * z + ey) + ty;
    const float o2 = scale * (r.m[6] * x + r.m[7] * y + r.m[8] * z + ez);
    out[0] = o0;
    out[1] = o1;
    out[2] = o2;
}

}  // namespace vasa
