// Counts the ATen operators this process dispatches, through libtorch's own
// RecordFunction hook (what torch.profiler sees): every op named `aten::...`
// at function scope, nested ones included, so an op that calls others counts
// them all, as PyTorch's profiler does. Reads of a tensor's value on the host
// (`aten::_local_scalar_dense`, what `item()` runs) are counted apart: on a
// GPU each one waits for the device.
#include <ATen/record_function.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "common.h"
#include "shim.h"

namespace {
std::atomic<int64_t> g_ops{0};
std::atomic<int64_t> g_scalar_reads{0};
thread_local bool t_excluded = false;
std::once_flag g_once;

std::unique_ptr<at::ObserverContext> on_op(const at::RecordFunction& fn) {
  if (t_excluded) return nullptr;
  const char* name = fn.name();
  if (name != nullptr && std::strncmp(name, "aten::", 6) == 0) {
    g_ops.fetch_add(1, std::memory_order_relaxed);
    if (std::strcmp(name + 6, "_local_scalar_dense") == 0) {
      g_scalar_reads.fetch_add(1, std::memory_order_relaxed);
    }
  }
  return nullptr;
}
}  // namespace

extern "C" int ssc_op_count_install(void) {
  SSC_GUARD({
    std::call_once(g_once, [] {
      at::addGlobalCallback(at::RecordFunctionCallback(on_op)
                                .needsInputs(false)
                                .needsOutputs(false)
                                .scopes({at::RecordScope::FUNCTION}));
    });
  });
}

extern "C" void ssc_op_count_exclude_thread(void) { t_excluded = true; }
extern "C" int64_t ssc_op_count_ops(void) { return g_ops.load(std::memory_order_relaxed); }
extern "C" int64_t ssc_op_count_scalar_reads(void) {
  return g_scalar_reads.load(std::memory_order_relaxed);
}
