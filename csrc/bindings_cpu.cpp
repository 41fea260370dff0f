// CPU extension vasa_engine._C: driving keypoints on numpy float32 arrays, and build information.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "array_checks.h"
#include "build_info.h"
#include "keypoint_math.h"
#include "sampler_math.h"

namespace py = pybind11;

namespace {

// A C-contiguous float32 numpy array (writeable if `writeable`), or ValueError naming the argument.
const py::array& checked(const py::array& a, const char* name, bool writeable = false) {
    if (!py::isinstance<py::array_t<float>>(a)) {
        throw vasa::ArgumentError(std::string("driving_keypoints: ") + name + " must be float32, got " +
                                  py::str(a.dtype()).cast<std::string>());
    }
    if (!(a.flags() & py::array::c_style)) {
        throw vasa::ArgumentError(std::string("driving_keypoints: ") + name + " must be C-contiguous");
    }
    if (writeable && !a.writeable()) {
        throw vasa::ArgumentError(std::string("driving_keypoints: ") + name + " must be writeable");
    }
    return a;
}

std::vector<int64_t> shape_of(const py::array& a) {
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

const float* data_of(const py::array& a) { return static_cast<const float*>(a.data()); }

void driving_keypoints(const py::array& kp, const py::array& pitch, const py::array& yaw, const py::array& roll,
                       const py::array& exp, const py::array& t, const py::array& scale, py::array out) {
    checked(kp, "kp");
    checked(pitch, "pitch");
    checked(yaw, "yaw");
    checked(roll, "roll");
    checked(exp, "exp");
    checked(t, "t");
    checked(scale, "scale");
    checked(out, "out", true);
    const vasa::KeypointDims d = vasa::check_keypoint_shapes(shape_of(kp), shape_of(pitch), shape_of(yaw),
                                                             shape_of(roll), shape_of(exp), shape_of(t),
                                                             shape_of(scale), shape_of(out));
    const float *kp_p = data_of(kp), *pitch_p = data_of(pitch), *yaw_p = data_of(yaw), *roll_p = data_of(roll);
    const float *exp_p = data_of(exp), *t_p = data_of(t), *scale_p = data_of(scale);
    float* out_p = static_cast<float*>(out.mutable_data());
    py::gil_scoped_release no_gil;
    for (int64_t b = 0; b < d.batch; ++b) {
        const vasa::Mat3 r = vasa::pose_matrix(pitch_p[b], yaw_p[b], roll_p[b]);
        const float* kp_b = kp_p + (d.kp_batch == 1 ? 0 : b * d.num_kp * 3);
        for (int64_t k = 0; k < d.num_kp; ++k) {
            const int64_t i = b * d.num_kp + k;
            vasa::driving_keypoint(r, kp_b + k * 3, exp_p + i * 3, t_p[b * 3], t_p[b * 3 + 1], scale_p[b],
                                   out_p + i * 3);
        }
    }
}

// A C-contiguous 1-D float32 array of n elements (writeable if asked), or ValueError naming the argument.
const float* step_vector(const py::handle& obj, const char* name, int64_t n, bool writeable = false,
                         bool optional = false) {
    if (obj.is_none()) {
        if (optional) return nullptr;
        throw vasa::ArgumentError(std::string("sampler_step: ") + name + " is required");
    }
    const py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!py::isinstance<py::array_t<float>>(a) || !(a.flags() & py::array::c_style)) {
        throw vasa::ArgumentError(std::string("sampler_step: ") + name + " must be a C-contiguous float32 array");
    }
    if (a.ndim() != 1 || a.shape(0) != n) {
        throw vasa::ArgumentError(std::string("sampler_step: ") + name + " must have shape (" + std::to_string(n) +
                                  ",), got " + vasa::shape_str(shape_of(a)));
    }
    if (writeable && !a.writeable()) {
        throw vasa::ArgumentError(std::string("sampler_step: ") + name + " must be writeable");
    }
    return static_cast<const float*>(a.data());
}

void sampler_step(const py::array& branches, int dtype, const std::vector<float>& scales, const py::object& x_t,
                  const py::object& x0_prev, const py::object& z, float a, float b0, float b1, float sigma,
                  const py::object& x_out, const py::object& x0_out) {
    if (dtype < 0 || dtype > 2) throw vasa::ArgumentError("sampler_step: dtype must be 0, 1 or 2");
    const int64_t itemsize = dtype == 0 ? 4 : 2;
    const bool kind_ok = dtype == 0   ? py::isinstance<py::array_t<float>>(branches)
                         : dtype == 1 ? branches.dtype().kind() == 'f' && branches.itemsize() == 2
                                      : (branches.dtype().kind() == 'u' || branches.dtype().kind() == 'i') &&
                                            branches.itemsize() == 2;
    if (!kind_ok || branches.itemsize() != itemsize || !(branches.flags() & py::array::c_style)) {
        throw vasa::ArgumentError("sampler_step: branches must be C-contiguous float32 (dtype 0), float16 (1) or "
                                  "16-bit bfloat16 bits (2)");
    }
    if (branches.ndim() != 2) {
        throw vasa::ArgumentError("sampler_step: branches must have shape (nb, n), got " +
                                  vasa::shape_str(shape_of(branches)));
    }
    const int64_t nb = branches.shape(0), n = branches.shape(1);
    if (nb < 1 || nb > vasa::kMaxBranches || static_cast<int64_t>(scales.size()) != nb - 1) {
        throw vasa::ArgumentError("sampler_step: need 1 to " + std::to_string(vasa::kMaxBranches) +
                                  " branches and one scale per branch after the first; got " + std::to_string(nb) +
                                  " branches, " + std::to_string(scales.size()) + " scales");
    }
    const float* xt = step_vector(x_t, "x_t", n);
    const float* prev = step_vector(x0_prev, "x0_prev", n, false, true);
    const float* noise = step_vector(z, "z", n, false, true);
    float* out = const_cast<float*>(step_vector(x_out, "x_out", n, true));
    float* out0 = const_cast<float*>(step_vector(x0_out, "x0_out", n, true, true));
    vasa::Guidance g{};
    g.branches = static_cast<int>(nb);
    for (int64_t k = 0; k + 1 < nb; ++k) g.scale[k] = scales[k];
    const vasa::StepCoefs c{a, b0, b1, sigma};
    const void* data = branches.data();
    const vasa::Dtype dt = static_cast<vasa::Dtype>(dtype);
    py::gil_scoped_release no_gil;
    for (int64_t i = 0; i < n; ++i) vasa::sampler_step_element(data, dt, n, i, g, xt, prev, noise, c, out, out0);
}

py::list split_archs(const std::string& s) {
    py::list out;
    size_t start = 0;
    while (start < s.size()) {
        size_t end = s.find_first_of(",;", start);
        if (end == std::string::npos) end = s.size();
        if (end > start) out.append(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

py::dict build_info() {
    py::dict info;
    info["compiler"] = VASA_CXX_COMPILER;
    info["cuda"] = static_cast<bool>(VASA_CUDA_BUILT);
    info["cuda_compiler"] = VASA_CUDA_COMPILER;
    info["cuda_archs"] = split_archs(VASA_CUDA_ARCHS);
    return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "Native CPU kernels of vasa_engine";
    m.def("driving_keypoints", &driving_keypoints, py::arg("kp"), py::arg("pitch"), py::arg("yaw"), py::arg("roll"),
          py::arg("exp"), py::arg("t"), py::arg("scale"), py::arg("out"),
          "Driving keypoints into `out` (B, K, 3): scale * (kp @ R(pitch, yaw, roll) + exp) + (t_x, t_y, 0).\n"
          "All arguments are C-contiguous float32 numpy arrays: kp (B, K, 3) or (1, K, 3); pitch, yaw, roll,\n"
          "scale (B,) in degrees for the angles; exp (B, K, 3); t (B, 3). Raises ValueError on bad arguments.");
    m.def("sampler_step", &sampler_step, py::arg("branches"), py::arg("dtype"), py::arg("scales"), py::arg("x_t"),
          py::arg("x0_prev"), py::arg("z"), py::arg("a"), py::arg("b0"), py::arg("b1"), py::arg("sigma"),
          py::arg("x_out"), py::arg("x0_out"),
          "One fused sampler step: x0 = b_0 + sum_k scales[k-1] (b_k - b_{k-1}) over the branch outputs\n"
          "(nb, n) (dtype 0 float32, 1 float16, 2 bfloat16 bits as uint16), then\n"
          "x_out = ((a x_t + b0 x0) + b1 x0_prev) + sigma z; x0 is stored in x0_out when given. x_t, x0_prev, z,\n"
          "x_out, x0_out: (n,) float32 (x0_prev, z, x0_out may be None). Raises ValueError on bad arguments.");
    m.def("build_info", &build_info,
          "Dict: compiler, cuda (whether the CUDA extension _C_cuda was built alongside), cuda_compiler, "
          "cuda_archs.");
}
