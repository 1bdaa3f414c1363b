// The c10d shim: PyTorch's own TCPStore + ProcessGroupGloo, collectives with
// timeouts, a counting CPU allocator and in-place storage free/refill.
#include "shim.h"
#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

static thread_local std::string g_last_error;

namespace ssc {
void set_error(std::string msg) { g_last_error = std::move(msg); }

static int classify(const std::string& msg) {
  std::string m(msg);
  std::transform(m.begin(), m.end(), m.begin(), [](unsigned char c) { return std::tolower(c); });
  if (m.find("timed out") != std::string::npos || m.find("timeout") != std::string::npos)
    return SSC_TIMEOUT;
  if (m.find("connection") != std::string::npos || m.find("broken pipe") != std::string::npos ||
      m.find("peer") != std::string::npos || m.find("socket") != std::string::npos)
    return SSC_NETWORK;
  return SSC_ERR;
}

int fail_current_exception() {
  try {
    throw;
  } catch (const c10::DistNetworkError& e) {
    set_error(e.what_without_backtrace());
    int c = classify(g_last_error);
    return c == SSC_TIMEOUT ? c : SSC_NETWORK;
  } catch (const c10::Error& e) {
    set_error(e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown C++ exception");
  }
  return classify(g_last_error);
}
}  // namespace ssc

extern "C" const char* ssc_last_error(void) { return g_last_error.c_str(); }

// ---------------------------------------------------------------- groups

c10::intrusive_ptr<c10d::Store> ssc::make_store(const char* host, uint16_t port, int rank,
                                                int world, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = port;
  o.isServer = rank == 0;
  o.numWorkers = world;
  o.waitWorkers = true;
  o.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
}

static bool is_loopback(const std::string& h) {
  return h == "127.0.0.1" || h == "localhost" || h == "::1";
}

static c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                                    const std::string& host, int rank, int world,
                                                    std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  // Bind where peers can reach us: loopback for single-node runs, the
  // interface named by GLOO_SOCKET_IFNAME (as in PyTorch) or the host's
  // resolved address for multi-node runs.
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname && *ifname) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (is_loopback(host)) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
}

extern "C" int ssc_pg_new_gloo(const char* host, uint16_t port, int rank, int world,
                               int64_t timeout_ms, ssc_pg** out) {
  SSC_GUARD({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto store = ssc::make_store(host, port, rank, world, timeout);
    auto pg = make_gloo(store, host, rank, world, timeout);
    *out = new ssc_pg{store, pg, true, timeout, -1, host};
  });
}

extern "C" int ssc_pg_new_sub(ssc_pg* parent, const char* prefix, int rank, int size,
                              ssc_pg** out) {
  SSC_GUARD({
    // As PyTorch's new_group: the parent's store under a prefix the group's
    // members share, a new backend of the parent's kind over them.
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), parent->store);
    auto pg = parent->is_gloo
                  ? make_gloo(store, parent->host, rank, size, parent->timeout)
                  : ssc::make_nccl(store, rank, size, parent->device, parent->timeout);
    *out = new ssc_pg{store, pg, parent->is_gloo, parent->timeout, parent->device, parent->host};
  });
}

extern "C" void ssc_pg_free(ssc_pg* pg) { delete pg; }

// ---------------------------------------------------------------- collectives

struct ssc_work {
  c10::intrusive_ptr<c10d::Work> work;
  std::chrono::milliseconds timeout;
};

static at::Tensor& T(void* p) { return *static_cast<at::Tensor*>(p); }

// What the backend sees: a fresh tensor on the same storage, outside
// autograd and with its own version counter. Collectives write raw bytes,
// like FSDP's all-gather into a flat parameter whose views autograd saved:
// bumping the shared version counter would make backward reject them.
static at::Tensor raw_alias(void* p) {
  const at::Tensor& t = T(p);
  at::AutoDispatchBelowADInplaceOrView guard;
  at::Tensor a = at::empty({0}, t.options().requires_grad(false));
  a.set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
  return a;
}

static c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0: return c10d::ReduceOp::SUM;
    case 1: return c10d::ReduceOp::AVG;
    case 2: return c10d::ReduceOp::MAX;
  }
  TORCH_CHECK(false, "unknown reduce op code ", op);
}

extern "C" int ssc_all_gather_into(ssc_pg* pg, void* out, void* in, ssc_work** w) {
  SSC_GUARD({
    c10d::AllgatherOptions o;
    o.timeout = pg->timeout;
    at::Tensor ro = raw_alias(out), ri = raw_alias(in);
    auto work = pg->backend->_allgather_base(ro, ri, o);
    *w = new ssc_work{work, pg->timeout};
  });
}

extern "C" int ssc_reduce_scatter(ssc_pg* pg, void* out, void* in, int op, ssc_work** w) {
  SSC_GUARD({
    c10d::ReduceScatterOptions o;
    o.reduceOp = reduce_op(op);
    o.timeout = pg->timeout;
    at::Tensor ro = raw_alias(out), ri = raw_alias(in);
    auto work = pg->backend->_reduce_scatter_base(ro, ri, o);
    *w = new ssc_work{work, pg->timeout};
  });
}

extern "C" int ssc_all_reduce(ssc_pg* pg, void* t, int op, ssc_work** w) {
  SSC_GUARD({
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    o.timeout = pg->timeout;
    std::vector<at::Tensor> v{raw_alias(t)};
    auto work = pg->backend->allreduce(v, o);
    *w = new ssc_work{work, pg->timeout};
  });
}

extern "C" int ssc_broadcast(ssc_pg* pg, void* t, int root, ssc_work** w) {
  SSC_GUARD({
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = pg->timeout;
    std::vector<at::Tensor> v{raw_alias(t)};
    auto work = pg->backend->broadcast(v, o);
    *w = new ssc_work{work, pg->timeout};
  });
}

extern "C" int ssc_barrier(ssc_pg* pg, ssc_work** w) {
  SSC_GUARD({
    c10d::BarrierOptions o;
    o.timeout = pg->timeout;
    if (pg->device >= 0) o.device_ids = {pg->device};
    auto work = pg->backend->barrier(o);
    *w = new ssc_work{work, pg->timeout};
  });
}

extern "C" int ssc_work_wait(ssc_work* w, int64_t timeout_ms) {
  SSC_GUARD({
    auto t = timeout_ms > 0 ? std::chrono::milliseconds(timeout_ms) : w->timeout;
    if (!w->work->wait(t)) TORCH_CHECK(false, "collective timed out after ", t.count(), " ms");
  });
}

extern "C" void ssc_work_free(ssc_work* w) { delete w; }

// ---------------------------------------------------------------- CPU memory

// Counts bytes handed out by c10's CPU allocator. Sizes are kept in a map so
// the raw deleter (which only gets the pointer) can subtract them; this keeps
// raw_allocate working for the few CPU kernels that use it.
namespace {
std::atomic<int64_t> g_current{0};
std::atomic<int64_t> g_peak{0};
std::mutex g_sizes_mu;
std::unordered_map<void*, int64_t>* g_sizes = new std::unordered_map<void*, int64_t>();

void counting_free(void* p) {
  if (!p) return;
  int64_t n = 0;
  {
    std::lock_guard<std::mutex> g(g_sizes_mu);
    auto it = g_sizes->find(p);
    if (it != g_sizes->end()) {
      n = it->second;
      g_sizes->erase(it);
    }
  }
  g_current.fetch_sub(n);
  c10::free_cpu(p);
}

class CountingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    void* p = n ? c10::alloc_cpu(n) : nullptr;
    if (p) {
      {
        std::lock_guard<std::mutex> g(g_sizes_mu);
        (*g_sizes)[p] = static_cast<int64_t>(n);
      }
      int64_t cur = g_current.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
      int64_t pk = g_peak.load();
      while (cur > pk && !g_peak.compare_exchange_weak(pk, cur)) {
      }
    }
    return {p, p, &counting_free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counting_free; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// Leaked on purpose: tensors freed during static destruction still call it.
CountingCpuAllocator* g_counting = new CountingCpuAllocator();
std::once_flag g_install_once;
}  // namespace

extern "C" int ssc_cpu_mem_install(void) {
  SSC_GUARD({
    // Priority above the default (0) so later default registrations cannot
    // silently replace the counter.
    std::call_once(g_install_once, [] { c10::SetCPUAllocator(g_counting, /*priority=*/1); });
    TORCH_CHECK(c10::GetCPUAllocator() == g_counting,
                "another CPU allocator with higher priority is installed");
  });
}
extern "C" int64_t ssc_cpu_mem_current(void) { return g_current.load(); }
extern "C" int64_t ssc_cpu_mem_peak(void) { return g_peak.load(); }
extern "C" void ssc_cpu_mem_reset_peak(void) { g_peak.store(g_current.load()); }

// ---------------------------------------------------------------- storage

extern "C" int ssc_storage_free(void* t) {
  SSC_GUARD({
    c10::StorageImpl* s = T(t).storage().unsafeGetStorageImpl();
    s->set_data_ptr_noswap(c10::DataPtr(nullptr, s->device()));
    s->set_nbytes(0);
  });
}

extern "C" int ssc_storage_refill(void* t, int64_t nbytes) {
  SSC_GUARD({
    TORCH_CHECK(nbytes >= 0, "negative storage size ", nbytes);
    c10::StorageImpl* s = T(t).storage().unsafeGetStorageImpl();
    c10::Allocator* a = s->allocator();
    TORCH_CHECK(a != nullptr, "storage has no allocator (tensor from external memory?)");
    s->set_data_ptr_noswap(a->allocate(static_cast<size_t>(nbytes)));
    s->set_nbytes(static_cast<size_t>(nbytes));
  });
}

extern "C" int64_t ssc_storage_nbytes(void* t) {
  try {
    return static_cast<int64_t>(T(t).storage().nbytes());
  } catch (...) {
    return -1;
  }
}

// ---------------------------------------------------------------- no CUDA

#ifndef SSC_WITH_CUDA
c10::intrusive_ptr<c10d::Backend> ssc::make_nccl(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                 int, std::chrono::milliseconds) {
  TORCH_CHECK(false, "seerscale was built without CUDA/NCCL headers; ProcessGroupNCCL is unavailable");
}
extern "C" int ssc_has_nccl(void) { return 0; }
extern "C" int ssc_pg_new_nccl(const char*, uint16_t, int, int, int, int64_t, ssc_pg**) {
  ssc::set_error("seerscale was built without CUDA/NCCL headers; ProcessGroupNCCL is unavailable");
  return SSC_ERR;
}
extern "C" int ssc_cuda_mem_stats(int, int64_t*, int64_t*) {
  ssc::set_error("seerscale was built without CUDA headers");
  return SSC_ERR;
}
extern "C" int ssc_cuda_mem_reset_peak(int) {
  ssc::set_error("seerscale was built without CUDA headers");
  return SSC_ERR;
}
extern "C" int ssc_cuda_describe(int, char*, int) {
  ssc::set_error("seerscale was built without CUDA headers");
  return SSC_ERR;
}
#endif
