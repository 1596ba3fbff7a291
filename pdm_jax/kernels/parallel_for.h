// ParallelFor: the work-sharing loop of this package's XLA FFI kernels, on the thread pool XLA gives a handler.
#ifndef PDM_JAX_KERNELS_PARALLEL_FOR_H_
#define PDM_JAX_KERNELS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace pdm_jax {

// Returns once `done` (counting finished work, with release stores) reaches `count`.
inline void WaitFor(const std::atomic<int64_t>& done, int64_t count) {
  while (done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

// Runs body(item, scratch) for item in [0, count) on the caller and XLA's pool, with one default-constructed
// Scratch (a task's reusable working memory) per task. Tasks claim items from a shared counter and the caller
// returns once every item is done. The pool may run a task late, after that, or on the caller itself: a late task
// finds no item left and touches only the shared state it co-owns, never the buffers.
template <typename Scratch, typename Body>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, count, &body]() {
    Scratch scratch;
    for (int64_t item; (item = state->next.fetch_add(1)) < count;) {
      body(item, scratch);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work]() { work(); });
  work();
  WaitFor(state->done, count);
}

// A Future already completed with `error` (or success): for handlers that return a Future and fail early.
inline xla::ffi::Future Completed(const xla::ffi::Error& error) {
  xla::ffi::Promise promise;
  xla::ffi::Future future(promise);
  if (error.success()) {
    promise.SetAvailable();
  } else {
    promise.SetError(error);
  }
  return future;
}

// Like ParallelFor, but returns at once a Future that completes when the last item is done: the calling thread goes
// back to XLA, which runs other ready work there, as it does around its own library convolutions. `body` is moved
// into state the tasks share and must own everything it uses beyond the call's buffers (which XLA keeps until the
// Future completes). A task that starts after the last item was claimed touches only that shared state.
template <typename Scratch, typename Body>
xla::ffi::Future ParallelForAsync(xla::ffi::ThreadPool& pool, int64_t count, Body body) {
  if (count <= 0) return Completed(xla::ffi::Error::Success());
  struct State {
    State(int64_t count, Body body) : remaining(count), body(std::move(body)) {}
    std::atomic<int64_t> next{0};
    xla::ffi::CountDownPromise remaining;
    Body body;
  };
  auto state = std::make_shared<State>(count, std::move(body));
  xla::ffi::Future future(state->remaining);
  const int64_t tasks = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), count);
  for (int64_t i = 0; i < tasks; ++i) {
    pool.Schedule([state, count]() {
      thread_local Scratch scratch;  // kept between calls: no fresh pages to fault in per call
      for (int64_t item; (item = state->next.fetch_add(1)) < count;) {
        state->body(item, scratch);
        state->remaining.CountDown();
      }
    });
  }
  return future;
}

}  // namespace pdm_jax

#endif  // PDM_JAX_KERNELS_PARALLEL_FOR_H_
