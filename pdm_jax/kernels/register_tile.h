// RegisterTile: the inner block of this package's matrix-product kernels, rows x (vectors * kLanes) outputs held in
// registers while the product's depth streams past (the loops are unrolled so that no accumulator leaves its
// register).
#ifndef PDM_JAX_KERNELS_REGISTER_TILE_H_
#define PDM_JAX_KERNELS_REGISTER_TILE_H_

#include <cstdint>

#include "vec.h"

namespace pdm_jax {

template <int64_t rows, int64_t vectors>
struct RegisterTile {
  Vec acc[rows][vectors] = {};

  // acc = y's rows (stride `stride` floats).
  void Load(const float* y, int64_t stride) {
#pragma GCC unroll 16
    for (int64_t m = 0; m < rows; ++m)
#pragma GCC unroll 4
      for (int64_t v = 0; v < vectors; ++v) acc[m][v] = pdm_jax::Load(y + m * stride + v * kLanes);
  }

  void Store(float* y, int64_t stride) const {
#pragma GCC unroll 16
    for (int64_t m = 0; m < rows; ++m)
#pragma GCC unroll 4
      for (int64_t v = 0; v < vectors; ++v) pdm_jax::Store(y + m * stride + v * kLanes, acc[m][v]);
  }

  // One step of the depth: row m += a[m * row_step] (broadcast) times the vectors * kLanes values at b.
  template <int64_t row_step>
  void Step(const float* a, const float* b) {
    Vec w[vectors];
#pragma GCC unroll 4
    for (int64_t v = 0; v < vectors; ++v) w[v] = pdm_jax::Load(b + v * kLanes);
#pragma GCC unroll 16
    for (int64_t m = 0; m < rows; ++m) {
      const Vec s = Splat(a[m * row_step]);
#pragma GCC unroll 4
      for (int64_t v = 0; v < vectors; ++v) acc[m][v] += s * w[v];
    }
  }
};

}  // namespace pdm_jax

#endif  // PDM_JAX_KERNELS_REGISTER_TILE_H_
