// Python binding of the CUDA RMSNorm (rms_norm.cu). The torch custom ops tinylm::rms_norm_fwd/_bwd that
// autograd and torch.compile see are defined in Python (tinylm/kernels/rms_norm_cuda.py) and call these.
#include <torch/extension.h>

#include <vector>

std::vector<at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x, const at::Tensor& w, double eps);
std::vector<at::Tensor> rms_norm_bwd_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                          const at::Tensor& rstd, int64_t blocks_per_sm);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tinylm.kernels CUDA RMSNorm (forward and fused backward)";
  m.def("rms_norm_fwd", &rms_norm_fwd_cuda,
        "RMSNorm forward over the last dim: returns (y, rstd), rstd float32 of shape x.shape[:-1].", py::arg("x"),
        py::arg("weight"), py::arg("eps"));
  m.def("rms_norm_bwd", &rms_norm_bwd_cuda,
        "RMSNorm backward: returns (dx, dweight). blocks_per_sm > 0 caps the persistent grid's blocks per SM.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("rstd"), py::arg("blocks_per_sm") = 0);
}
