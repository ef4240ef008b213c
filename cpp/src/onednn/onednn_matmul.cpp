#include "onednn/onednn_matmul.h"

#include <stdexcept>

#ifdef SLMOPS_HAVE_ONEDNN
#include <map>
#include <mutex>
#include <tuple>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace slmops::onednn {

#ifdef SLMOPS_HAVE_ONEDNN

namespace {

using dt = dnnl::memory::data_type;

struct Context {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mutex;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, dnnl::matmul::primitive_desc> cache;
};

Context& context() {
  static Context c;
  return c;
}

}  // namespace

bool available() { return true; }

void matmul_s8s8s32(const int8_t* src, int64_t M, int64_t K, int64_t lds, const int8_t* wei, int64_t N, int32_t* dst) {
  Context& c = context();
  // The weight is used where it lies: [N, K] row-major is W^T as a [K, N] matrix with
  // strides (1, K); no reorder, so nothing is copied per call or kept per weight.
  const dnnl::memory::desc src_md({M, K}, dt::s8, {lds, 1});
  const dnnl::memory::desc wei_md({K, N}, dt::s8, {1, K});
  const dnnl::memory::desc dst_md({M, N}, dt::s32, {N, 1});
  dnnl::matmul::primitive_desc pd;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    const auto key = std::make_tuple(M, N, K, lds);
    auto it = c.cache.find(key);
    if (it == c.cache.end())
      it = c.cache.emplace(key, dnnl::matmul::primitive_desc(c.engine, src_md, wei_md, dst_md)).first;
    pd = it->second;
  }
  try {
    dnnl::stream stream(c.engine);
    dnnl::matmul(pd).execute(stream, {{DNNL_ARG_SRC, dnnl::memory(src_md, c.engine, const_cast<int8_t*>(src))},
                                      {DNNL_ARG_WEIGHTS, dnnl::memory(wei_md, c.engine, const_cast<int8_t*>(wei))},
                                      {DNNL_ARG_DST, dnnl::memory(dst_md, c.engine, dst)}});
    stream.wait();
  } catch (const dnnl::error& e) {
    throw std::runtime_error(std::string("oneDNN int8 matmul failed: ") + e.what());
  }
}

#else

bool available() { return false; }

void matmul_s8s8s32(const int8_t*, int64_t, int64_t, int64_t, const int8_t*, int64_t, int32_t*) {
  throw std::runtime_error("slmops was built without oneDNN (SLMOPS_WITH_ONEDNN=OFF or not found)");
}

#endif

}  // namespace slmops::onednn
