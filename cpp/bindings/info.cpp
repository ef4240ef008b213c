// slmops._C: what the build holds and how it runs: build info, threads, CPU ISAs, and the
// quantization format table.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common.h"
#include "slmops/build_info.h"
#include "slmops/cpu_features.h"
#include "slmops/quant.h"
#include "slmops/threading.h"

namespace slmops::bindings {
namespace {

py::dict py_build_info() {
  const BuildInfo b = build_info();
  py::dict d;
  d["version"] = b.version;
  d["compiler"] = b.compiler;
  d["openmp"] = b.openmp;
  d["num_threads"] = b.num_threads;
  d["cpu_isa_detected"] = b.cpu_isa_detected;
  d["cpu_isa"] = b.cpu_isa_active;
  d["cpu_isas_compiled"] = b.cpu_isas_compiled;
  d["onednn"] = b.onednn;
  d["onednn_version"] = b.onednn ? py::object(py::str(b.onednn_version)) : py::object(py::none());
  d["cuda"] = b.cuda;
  d["cuda_architectures"] = b.cuda ? py::object(py::str(b.cuda_architectures)) : py::object(py::none());
  d["cuda_devices"] = b.cuda_devices;
  return d;
}

}  // namespace

void register_info(py::module_& m) {
  m.def("build_info", &py_build_info);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("available_cpu_isas", [] {
    std::vector<std::string> out;
    for (CpuIsa i : available_cpu_isas()) out.push_back(cpu_isa_name(i));
    return out;
  });

  m.def("quant_formats", [] {
    py::list out;
    for (int i = 0; i < kNumQuantFormats; ++i) {
      const QuantFormatInfo& f = quant_format_info(static_cast<QuantFormat>(i));
      py::dict d;
      d["name"] = f.name;
      d["bits"] = f.bits;
      d["block_size"] = f.block_size;
      d["block_bytes"] = f.block_bytes;
      d["has_group_size"] = f.has_group_size;
      d["has_symmetric_option"] = f.has_symmetric_option;
      d["default_group_size"] = f.default_group_size;
      out.append(d);
    }
    return out;
  });
}

}  // namespace slmops::bindings
