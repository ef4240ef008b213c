#include "onednn/onednn_info.h"

#ifdef SLMOPS_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace slmops::onednn {

std::string version() {
#ifdef SLMOPS_HAVE_ONEDNN
  const dnnl_version_t* v = dnnl_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
#else
  return "";
#endif
}

}  // namespace slmops::onednn
