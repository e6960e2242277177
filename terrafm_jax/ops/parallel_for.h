// Work sharing over XLA:CPU's intra-op thread pool for the FFI kernels of this folder.
#ifndef TERRAFM_JAX_OPS_PARALLEL_FOR_H_
#define TERRAFM_JAX_OPS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace terrafm {

// Runs task(i) for i in [0, count) on the pool and the calling thread. Every participant takes
// the next index until none is left; the caller then waits only for tasks already running, so a
// busy pool can delay but never block the call. The state is shared because a helper may start
// after the call returned (it then finds no work). Each index runs whole on one thread.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count,
                        std::function<void(int64_t)> task) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::function<void(int64_t)> task;
  };
  auto state = std::make_shared<State>();
  state->task = std::move(task);
  auto work = [state, count]() {
    for (int64_t i = state->next.fetch_add(1); i < count; i = state->next.fetch_add(1)) {
      state->task(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(std::function<void()>(work));
  work();
  while (state->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

}  // namespace terrafm

#endif  // TERRAFM_JAX_OPS_PARALLEL_FOR_H_
