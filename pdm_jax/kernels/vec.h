// Vec: the float vector of this package's XLA FFI kernels, with unaligned loads and stores.
#ifndef PDM_JAX_KERNELS_VEC_H_
#define PDM_JAX_KERNELS_VEC_H_

#include <cstdint>
#include <cstring>
#include <utility>

namespace pdm_jax {

constexpr int64_t kLanes = 16;  // one AVX-512 register; GCC splits it where the machine has narrower vectors
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// x in every lane, as one broadcast instruction (Vec{} + x would add 0 first: it is not x for x = -0).
template <size_t... lane>
inline Vec SplatLanes(float x, std::index_sequence<lane...>) {
  return Vec{((void)lane, x)...};
}
inline Vec Splat(float x) { return SplatLanes(x, std::make_index_sequence<kLanes>()); }

}  // namespace pdm_jax

#endif  // PDM_JAX_KERNELS_VEC_H_
