// CUDA extension vasa_engine._C_cuda: launches the driving-keypoint kernel on raw device pointers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "build_info.h"
#include "keypoints_cuda.h"
#include "sampler_step_cuda.h"

#include <vector>

namespace py = pybind11;

namespace {

void* as_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
const float* as_fptr(std::uintptr_t p) { return reinterpret_cast<const float*>(p); }

void driving_keypoints(std::uintptr_t kp, std::uintptr_t pitch, std::uintptr_t yaw, std::uintptr_t roll,
                       std::uintptr_t exp, std::uintptr_t t, std::uintptr_t scale, std::uintptr_t out,
                       int64_t batch, int64_t num_kp, int64_t kp_batch, std::uintptr_t stream) {
    if (batch < 0 || num_kp < 0) {
        throw std::invalid_argument("driving_keypoints: B and K must be >= 0, got B=" + std::to_string(batch) +
                                    ", K=" + std::to_string(num_kp));
    }
    if (kp_batch != 1 && kp_batch != batch) {
        throw std::invalid_argument("driving_keypoints: kp_batch must be 1 or B=" + std::to_string(batch) +
                                    ", got " + std::to_string(kp_batch));
    }
    if (num_kp > 0 && batch > INT32_MAX / 3 / num_kp) {
        throw std::invalid_argument("driving_keypoints: B * K * 3 must be below 2^31");
    }
    if (batch * num_kp > 0 && (!kp || !pitch || !yaw || !roll || !exp || !t || !scale || !out)) {
        throw std::invalid_argument("driving_keypoints: null device pointer");
    }
    int err;
    {
        py::gil_scoped_release no_gil;
        err = vasa::launch_driving_keypoints(as_fptr(kp), as_fptr(pitch), as_fptr(yaw), as_fptr(roll), as_fptr(exp),
                                             as_fptr(t), as_fptr(scale), reinterpret_cast<float*>(out), batch,
                                             num_kp, kp_batch, as_ptr(stream));
    }
    if (err != 0) {
        throw std::runtime_error(std::string("driving_keypoints: CUDA kernel launch failed: ") +
                                 vasa::cuda_error_string(err));
    }
}

void sampler_step(std::uintptr_t branches, int dtype, int64_t n, const std::vector<float>& scales,
                  std::uintptr_t x_t, std::uintptr_t x0_prev, std::uintptr_t z, float a, float b0, float b1,
                  float sigma, std::uintptr_t x_out, std::uintptr_t x0_out, std::uintptr_t stream) {
    const int nb = static_cast<int>(scales.size()) + 1;
    if (n < 0) throw std::invalid_argument("sampler_step: n must be >= 0");
    if (nb > 8) throw std::invalid_argument("sampler_step: at most 8 branches");
    if (dtype < 0 || dtype > 2) throw std::invalid_argument("sampler_step: dtype must be 0, 1 or 2");
    if (n > 0 && (!branches || !x_t || !x_out)) throw std::invalid_argument("sampler_step: null device pointer");
    int err;
    {
        py::gil_scoped_release no_gil;
        err = vasa::launch_sampler_step(as_ptr(branches), dtype, n, nb, scales.data(), as_fptr(x_t), as_fptr(x0_prev),
                                        as_fptr(z), a, b0, b1, sigma, reinterpret_cast<float*>(x_out),
                                        reinterpret_cast<float*>(x0_out), as_ptr(stream));
    }
    if (err != 0) {
        throw std::runtime_error(std::string("sampler_step: CUDA kernel launch failed: ") +
                                 vasa::cuda_error_string(err));
    }
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
    m.doc() = "Native CUDA kernels of vasa_engine (raw device pointers, no torch dependency)";
    m.def("driving_keypoints", &driving_keypoints, py::arg("kp"), py::arg("pitch"), py::arg("yaw"), py::arg("roll"),
          py::arg("exp"), py::arg("t"), py::arg("scale"), py::arg("out"), py::arg("B"), py::arg("K"),
          py::arg("kp_batch"), py::arg("stream") = 0,
          "Launch the driving-keypoint kernel on `stream` (a cudaStream_t as int, 0 = default stream).\n"
          "Pointers are device addresses of contiguous float32 data: kp (kp_batch, K, 3) with kp_batch 1 or B;\n"
          "pitch, yaw, roll, scale (B,); exp (B, K, 3); t (B, 3); out (B, K, 3). Asynchronous: only launch\n"
          "errors are raised here (RuntimeError).");
    m.def("sampler_step", &sampler_step, py::arg("branches"), py::arg("dtype"), py::arg("n"), py::arg("scales"),
          py::arg("x_t"), py::arg("x0_prev"), py::arg("z"), py::arg("a"), py::arg("b0"), py::arg("b1"),
          py::arg("sigma"), py::arg("x_out"), py::arg("x0_out"), py::arg("stream") = 0,
          "Launch the fused sampler step on `stream`. Device addresses: branches (nb, n) with nb = len(scales) + 1\n"
          "(dtype 0 float32, 1 float16, 2 bfloat16), x_t, x0_prev, z, x_out, x0_out (n,) float32 (x0_prev, z and\n"
          "x0_out may be 0). Asynchronous: only launch errors are raised here (RuntimeError).");
    m.def("build_info", []() {
        py::dict info;
        info["cuda_compiler"] = VASA_CUDA_COMPILER;
        py::list archs;
        std::string s = VASA_CUDA_ARCHS;
        size_t start = 0;
        while (start < s.size()) {
            size_t end = s.find_first_of(",;", start);
            if (end == std::string::npos) end = s.size();
            if (end > start) archs.append(s.substr(start, end - start));
            start = end + 1;
        }
        info["cuda_archs"] = archs;
        return info;
    });
}
