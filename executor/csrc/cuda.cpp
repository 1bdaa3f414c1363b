// GPU half of the shim: ProcessGroupNCCL and the CUDA caching allocator's
// statistics. Compiled only when build.rs finds the CUDA runtime and NCCL
// headers (it defines SSC_WITH_CUDA and USE_C10D_NCCL).
#include "shim.h"
#include "common.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

extern "C" int ssc_has_nccl(void) { return 1; }

extern "C" int ssc_pg_new_nccl(const char* host, uint16_t port, int rank, int world, int device,
                               int64_t timeout_ms, ssc_pg** out) {
  SSC_GUARD({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto store = ssc::make_store(host, port, rank, world, timeout);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
    *out = new ssc_pg{store, pg, false, timeout};
  });
}

extern "C" int ssc_cuda_mem_stats(int device, int64_t* current, int64_t* peak) {
  SSC_GUARD({
    auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *current = st.allocated_bytes[agg].current;
    *peak = st.allocated_bytes[agg].peak;
  });
}

extern "C" int ssc_cuda_mem_reset_peak(int device) {
  SSC_GUARD({ c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}
