// GPU half of the shim: ProcessGroupNCCL and the CUDA caching allocator's
// statistics. Compiled only when build.rs finds the CUDA runtime and NCCL
// headers (it defines SSC_WITH_CUDA and USE_C10D_NCCL).
#include "shim.h"
#include "common.h"

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/distributed/c10d/NCCLUtils.hpp>
#include <torch/headeronly/version.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
// Fails with a plain message when `device` is not a usable CUDA device.
// Without it a CPU-only machine gets the CUDA runtime's error code, or the
// allocator's "Invalid device argument: did you call init?".
void check_device(int device) {
  // 0 (after a one-time warning from c10) when there is no driver or GPU.
  const int n = c10::cuda::device_count();
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  TORCH_CHECK(n > 0, "no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES=",
              visible ? visible : "<unset>", ")");
  TORCH_CHECK(device >= 0 && device < n, "CUDA device ", device, " does not exist (", n,
              " visible)");
}

// The caching allocator is created by libtorch's lazy CUDA init (the first
// CUDA tensor); before that its statistics calls reject every device. Reading
// or resetting stats ahead of the first allocation must work, so init here.
void init_cuda(int device) {
  check_device(device);
  at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
}
}  // namespace

extern "C" int ssc_has_nccl(void) { return 1; }

c10::intrusive_ptr<c10d::Backend> ssc::make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                                 int rank, int world, int device,
                                                 std::chrono::milliseconds timeout) {
  check_device(device);
  // ProcessGroupNCCL binds its communicators to the current device.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
}

extern "C" int ssc_pg_new_nccl(const char* host, uint16_t port, int rank, int world, int device,
                               int64_t timeout_ms, ssc_pg** out) {
  SSC_GUARD({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    check_device(device);
    auto store = ssc::make_store(host, port, rank, world, timeout);
    auto pg = ssc::make_nccl(store, rank, world, device, timeout);
    *out = new ssc_pg{store, pg, false, timeout, device, host};
  });
}

extern "C" int ssc_cuda_mem_stats(int device, int64_t* current, int64_t* peak) {
  SSC_GUARD({
    init_cuda(device);
    auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *current = st.allocated_bytes[agg].current;
    *peak = st.allocated_bytes[agg].peak;
  });
}

extern "C" int ssc_cuda_mem_reset_peak(int device) {
  SSC_GUARD({
    init_cuda(device);
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
}

extern "C" int ssc_cuda_describe(int device, char* buf, int len) {
  SSC_GUARD({
    init_cuda(device);
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(device);
    char head[256];
    std::snprintf(head, sizeof head, "%s (%d SMs, %.1f GiB)", p->name, p->multiProcessorCount,
                  static_cast<double>(p->totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
    std::string s = std::string(head) + "; libtorch " + TORCH_VERSION + ", CUDA " +
                    std::to_string(CUDART_VERSION / 1000) + "." +
                    std::to_string((CUDART_VERSION % 1000) / 10) + " (headers), cuDNN " +
                    std::to_string(at::detail::getCUDAHooks().versionRuntimeCuDNN()) + ", NCCL " +
                    c10d::getNcclVersion();
    std::strncpy(buf, s.c_str(), static_cast<size_t>(len > 0 ? len - 1 : 0));
    if (len > 0) buf[len - 1] = '\0';
  });
}
