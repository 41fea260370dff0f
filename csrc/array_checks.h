// Argument checks shared by the Python bindings: shapes of the driving-keypoint inputs, with ValueError messages.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace vasa {

// Thrown for bad arguments; the bindings map it to Python's ValueError (std::invalid_argument does that already).
using ArgumentError = std::invalid_argument;

inline std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}

// Batch B, keypoints K and kp batch (1 or B) from the shapes; throws ArgumentError on any mismatch.
struct KeypointDims {
    int64_t batch = 0;
    int64_t num_kp = 0;
    int64_t kp_batch = 0;
};

inline void expect_shape(const char* name, const std::vector<int64_t>& got, const std::vector<int64_t>& want) {
    if (got != want) {
        throw ArgumentError(std::string("driving_keypoints: ") + name + " must have shape " + shape_str(want) +
                            ", got " + shape_str(got));
    }
}

inline KeypointDims check_keypoint_shapes(const std::vector<int64_t>& kp, const std::vector<int64_t>& pitch,
                                          const std::vector<int64_t>& yaw, const std::vector<int64_t>& roll,
                                          const std::vector<int64_t>& exp, const std::vector<int64_t>& t,
                                          const std::vector<int64_t>& scale, const std::vector<int64_t>& out) {
    if (exp.size() != 3 || exp[2] != 3) {
        throw ArgumentError("driving_keypoints: exp must have shape (B, K, 3), got " + shape_str(exp));
    }
    KeypointDims d;
    d.batch = exp[0];
    d.num_kp = exp[1];
    if (kp.size() != 3 || kp[2] != 3 || kp[1] != d.num_kp || (kp[0] != 1 && kp[0] != d.batch)) {
        throw ArgumentError("driving_keypoints: kp must have shape (B, K, 3) or (1, K, 3) with B=" +
                            std::to_string(d.batch) + ", K=" + std::to_string(d.num_kp) + " from exp, got " +
                            shape_str(kp));
    }
    d.kp_batch = kp[0];
    expect_shape("pitch", pitch, {d.batch});
    expect_shape("yaw", yaw, {d.batch});
    expect_shape("roll", roll, {d.batch});
    expect_shape("t", t, {d.batch, 3});
    expect_shape("scale", scale, {d.batch});
    expect_shape("out", out, {d.batch, d.num_kp, 3});
    return d;
}

}  // namespace vasa
