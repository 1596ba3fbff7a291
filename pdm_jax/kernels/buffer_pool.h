// Buffers: float working memory for the kernels' per-call state, reused across calls.
//
// Why: a convolution's transformed kernel or partial sums are megabytes; allocated afresh per call, the memory
// comes from the OS each time (page faults, zeroing), which cost as much as the arithmetic for the network's 8x8
// layers. A call takes a buffer when it starts and the buffer returns to the pool when the call's last task ends,
// so calls that XLA runs at the same time never share one.
#ifndef PDM_JAX_KERNELS_BUFFER_POOL_H_
#define PDM_JAX_KERNELS_BUFFER_POOL_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace pdm_jax {

class Buffer {
 public:
  // At least `size` floats, contents unspecified.
  explicit Buffer(int64_t size) {
    {
      std::lock_guard<std::mutex> lock(Mutex());
      if (!Free().empty()) {
        data_ = std::move(Free().back());
        Free().pop_back();
      }
    }
    if (!data_) data_ = std::make_unique<std::vector<float>>();
    if (static_cast<int64_t>(data_->size()) < size) data_->resize(size);
  }
  ~Buffer() {
    std::lock_guard<std::mutex> lock(Mutex());
    Free().push_back(std::move(data_));
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* get() const { return data_->data(); }

 private:
  static std::mutex& Mutex() {
    static std::mutex mutex;
    return mutex;
  }
  static std::vector<std::unique_ptr<std::vector<float>>>& Free() {
    static auto* free = new std::vector<std::unique_ptr<std::vector<float>>>();  // never destroyed: outlives calls
    return *free;
  }
  std::unique_ptr<std::vector<float>> data_;
};

}  // namespace pdm_jax

#endif  // PDM_JAX_KERNELS_BUFFER_POOL_H_
