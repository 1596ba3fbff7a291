// A 3x3, stride-1, padding-1 convolution for XLA:CPU by Winograd's minimal filtering F(4x4, 3x3), called through the
// XLA FFI (pdm_jax/kernels/winograd_cpu.py): the model's 3x3 convolutions, their input gradients and (WeightGrad,
// below) their kernel gradients.
//
// Why: XLA's direct convolutions run at ~280 GFLOP/s on two cores of the CPUs we measured, within ~15% of what the
// cores can do, and so do torch's; they are most of a train step. Winograd's algorithm computes a 4x4 block of
// outputs from a 6x6 block of inputs with 36 products per channel pair instead of 144: the input block d and the
// 3x3 kernel g are transformed (V = BT d B, U = G g GT), multiplied elementwise in the 36 "frequencies" (for many
// blocks and channels at once, 36 matrix products), and transformed back (Y = AT M A). Here the kernel is
// transformed first (one task per panel of 32 output channels), then the input and output transforms run on a block
// of tiles held in a core's cache, around those 36 products. Rounding differs from a direct convolution's: the
// largest error against float64 sums is ~1e-5 of the output's largest value, 9-24x a direct float32 convolution's.
//
// Layouts (float32, row-major): x (B, H, W, C) with C a multiple of kLanes; kernel (3, 3, C, O) with O a multiple
// of 32, or with `transposed` (3, 3, O, C), used flipped in both taps and its channels swapped: the input gradient of
// a convolution with that kernel; y (B, H, W, O). Every output value is computed by one thread in a fixed order.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "buffer_pool.h"
#include "parallel_for.h"
#include "register_tile.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using pdm_jax::kLanes;
using pdm_jax::Load;
using pdm_jax::Splat;
using pdm_jax::Store;
using pdm_jax::Vec;

namespace {

constexpr int64_t kPanel = 32;  // output channels per kernel panel (two vectors)
constexpr int64_t kVectors = kPanel / kLanes;
#ifdef __AVX512F__
constexpr int64_t kRows = 12;  // tiles per register tile: 24 accumulators of 32 registers
#else
constexpr int64_t kRows = 3;   // where a Vec is two registers
#endif
constexpr int64_t kFreqs = 36;           // 6 x 6 transformed positions
constexpr int64_t kBlockBytes = 1 << 20;  // V and M of a block of tiles: about a core's L2

struct Shape {
  int64_t batch, height, width, in_channels, out_channels;
  bool transposed;  // the kernel is given as (3, 3, O, C) and used flipped: an input gradient
  int64_t tiles_h() const { return (height + 3) / 4; }
  int64_t tiles_w() const { return (width + 3) / 4; }
  int64_t tiles() const { return batch * tiles_h() * tiles_w(); }
};

// Where tile `tile` (counted in (b, th, tw) order) is: image b, rows [4 th, 4 th + 4), columns [4 tw, 4 tw + 4).
struct TilePosition {
  int64_t b, th, tw;
  TilePosition(const Shape& s, int64_t tile)
      : b(tile / s.tiles_w() / s.tiles_h()), th(tile / s.tiles_w() % s.tiles_h()), tw(tile % s.tiles_w()) {}
};

// BT d for six vectors at stride `step` (Lavin and Gray's F(4, 3) with points 0, +-1, +-2).
inline void InputTransform(const Vec* d, int64_t step, Vec* out, int64_t out_step) {
  const Vec d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step], d4 = d[4 * step], d5 = d[5 * step];
  const Vec two = Splat(2.f), four = Splat(4.f), five = Splat(5.f);
  out[0] = four * d0 - five * d2 + d4;
  out[out_step] = d3 + d4 - four * (d1 + d2);
  out[2 * out_step] = four * (d1 - d2) + d4 - d3;
  out[3 * out_step] = two * (d3 - d1) + d4 - d2;
  out[4 * out_step] = two * (d1 - d3) + d4 - d2;
  out[5 * out_step] = four * d1 - five * d3 + d5;
}

// G g: three vectors at stride `step` to six at stride `out_step` (G's rows scaled so that BT and AT are integer).
inline void KernelTransform(const Vec* g, int64_t step, Vec* out, int64_t out_step) {
  const Vec g0 = g[0], g1 = g[step], g2 = g[2 * step];
  const Vec sum_odd = g0 + g2;
  out[0] = Splat(1.f / 4) * g0;
  out[out_step] = Splat(-1.f / 6) * (sum_odd + g1);
  out[2 * out_step] = Splat(-1.f / 6) * (sum_odd - g1);
  const Vec quarter = Splat(1.f / 24) * g0 + Splat(1.f / 6) * g2, half = Splat(1.f / 12) * g1;
  out[3 * out_step] = quarter + half;
  out[4 * out_step] = quarter - half;
  out[5 * out_step] = g2;
}

// AT m: six vectors at stride `step` to four at stride `out_step`.
inline void OutputTransform(const Vec* m, int64_t step, Vec* out, int64_t out_step) {
  const Vec m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step];
  const Vec a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;
  out[0] = m0 + a + c;
  out[out_step] = b + Splat(2.f) * e;
  out[2 * out_step] = a + Splat(4.f) * c;
  out[3 * out_step] = b + Splat(8.f) * e + m5;
}

// V = BT d B of input channels [16c, 16c + 16) of the tile at `at`: d is its 6x6 window from one row and column
// before it, zeros outside the image.
void TransformedInputTile(const Shape& s, const float* x, const TilePosition& at, int64_t c, Vec* v) {
  Vec d[36], e[36];
  for (int64_t i = 0; i < 6; ++i) {
    const int64_t h = at.th * 4 - 1 + i;
    for (int64_t j = 0; j < 6; ++j) {
      const int64_t w = at.tw * 4 - 1 + j;
      d[i * 6 + j] = (h >= 0 && h < s.height && w >= 0 && w < s.width)
                         ? Load(x + ((at.b * s.height + h) * s.width + w) * s.in_channels + c * kLanes)
                         : Vec{};
    }
  }
  for (int64_t j = 0; j < 6; ++j) InputTransform(d + j, 6, e + j, 6);          // columns
  for (int64_t i = 0; i < 6; ++i) InputTransform(e + i * 6, 1, v + i * 6, 1);  // rows
}

// y rows [0, rows) (stride O) (+)= A times the panel b (depth rows of kPanel), depth a multiple of kLanes. A's
// entry in row m at depth k = 16q + l is at a + q * chunk + l * step + m * row_step: the forward convolution's tile
// panels (chunks of kRows x kLanes) and, for the kernel gradient, transformed tiles in the layout the transform
// writes (one row of C channels per tile).
template <int64_t rows, int64_t row_step>
void Product(const float* a, int64_t step, int64_t chunk, const float* b, int64_t depth, int64_t O, bool accumulate,
             float* y) {
  pdm_jax::RegisterTile<rows, kVectors> tile;
  if (accumulate) tile.Load(y, O);
  for (int64_t q = 0; q < depth / kLanes; ++q) {
    const float* aq = a + q * chunk;
    const float* bq = b + q * kLanes * kPanel;
    if constexpr (row_step == kLanes) {  // the forward's panels: step 1, known here, so the offsets are constants
      for (int64_t l = 0; l < kLanes; ++l) tile.template Step<row_step>(aq + l, bq + l * kPanel);
    } else {
      for (int64_t l = 0; l < kLanes; ++l) tile.template Step<row_step>(aq + l * step, bq + l * kPanel);
    }
  }
  tile.Store(y, O);
}

// Product with the row count known at compile time: kRows, or the rows left at the end.
template <int64_t row_step, int64_t rows = kRows>
void ProductRows(int64_t n, const float* a, int64_t step, int64_t chunk, const float* b, int64_t depth, int64_t O,
                 bool accumulate, float* y) {
  if constexpr (rows > 1) {
    if (n < rows) return ProductRows<row_step, rows - 1>(n, a, step, chunk, b, depth, O, accumulate, y);
  }
  Product<rows, row_step>(a, step, chunk, b, depth, O, accumulate, y);
}

// Panel p of U = G g GT (output channels [32p, 32p + 32)): frequency f, input channel c at
// ((f * panels + p) * C + c) * kPanel.
void TransformPanel(const Shape& s, const float* kernel, int64_t p, float* u) {
  const int64_t C = s.in_channels, O = s.out_channels, panels = O / kPanel;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t v = 0; v < kVectors; ++v) {
      const int64_t o = p * kPanel + v * kLanes;
      Vec g[9], r[18], w[36];
      for (int64_t tap = 0; tap < 9; ++tap) {
        if (!s.transposed) {
          g[tap] = Load(kernel + (tap * C + c) * O + o);
        } else {  // g[i][j][c][o] = kernel[2 - i][2 - j][o][c]
          float lanes[kLanes];
          for (int64_t l = 0; l < kLanes; ++l) lanes[l] = kernel[((8 - tap) * O + o + l) * C + c];
          g[tap] = Load(lanes);
        }
      }
      for (int64_t j = 0; j < 3; ++j) KernelTransform(g + j, 3, r + j, 3);      // columns: r is 6 x 3
      for (int64_t a = 0; a < 6; ++a) KernelTransform(r + a * 3, 1, w + a * 6, 1);  // rows: w is 6 x 6
      for (int64_t f = 0; f < kFreqs; ++f) Store(u + ((f * panels + p) * C + c) * kPanel + v * kLanes, w[f]);
    }
  }
}

// Tiles [first, first + count) of the images (in (b, th, tw) order) and where their transformed inputs V and
// products M are. V: frequency f of tile first + t, channels [16c, 16c + 16), at
// ((f * groups + t / kRows) * chunks + c) * kRows * kLanes + (t % kRows) * kLanes, so that each frequency's tiles
// are the row panels Product reads; M: frequency f of tile first + t at (f * count + t) * O.
struct Tiles {
  int64_t first, count;
  float* v;
  float* m;
  int64_t groups() const { return (count + kRows - 1) / kRows; }
};

// V of every tile.
void TransformInputs(const Shape& s, const float* x, const Tiles& tiles) {
  const int64_t chunks = s.in_channels / kLanes, groups = tiles.groups();
  for (int64_t t = 0; t < tiles.count; ++t) {
    const TilePosition at(s, tiles.first + t);
    float* vt = tiles.v + (t / kRows) * chunks * kRows * kLanes + (t % kRows) * kLanes;
    for (int64_t c = 0; c < chunks; ++c) {
      Vec v[36];
      TransformedInputTile(s, x, at, c, v);
      for (int64_t f = 0; f < kFreqs; ++f) Store(vt + (f * groups * chunks + c) * kRows * kLanes, v[f]);
    }
  }
}

// M of every tile for kernel panels [p_begin, p_end).
void Products(const Shape& s, const float* u, const Tiles& tiles, int64_t p_begin, int64_t p_end) {
  const int64_t C = s.in_channels, O = s.out_channels, chunks = C / kLanes, panels = O / kPanel;
  const int64_t groups = tiles.groups();
  for (int64_t f = 0; f < kFreqs; ++f) {
    for (int64_t p = p_begin; p < p_end; ++p) {
      const float* panel = u + (f * panels + p) * C * kPanel;
      for (int64_t g = 0; g < groups; ++g) {
        ProductRows<kLanes>(std::min(kRows, tiles.count - g * kRows),
                            tiles.v + (f * groups + g) * chunks * kRows * kLanes, 1, kRows * kLanes, panel, C, O,
                            false, tiles.m + (f * tiles.count + g * kRows) * O + p * kPanel);
      }
    }
  }
}

// y of every tile, output channels [o_begin, o_end), from their M.
void TransformOutputs(const Shape& s, const Tiles& tiles, int64_t o_begin, int64_t o_end, float* y) {
  const int64_t O = s.out_channels;
  for (int64_t t = 0; t < tiles.count; ++t) {
    const TilePosition at(s, tiles.first + t);
    for (int64_t c = o_begin / kLanes; c < o_end / kLanes; ++c) {
      Vec d[36], e[24], r[16];
      for (int64_t f = 0; f < kFreqs; ++f) d[f] = Load(tiles.m + (f * tiles.count + t) * O + c * kLanes);
      for (int64_t j = 0; j < 6; ++j) OutputTransform(d + j, 6, e + j, 6);          // columns: e is 4 x 6
      for (int64_t i = 0; i < 4; ++i) OutputTransform(e + i * 6, 1, r + i * 4, 1);  // rows: r is 4 x 4
      for (int64_t i = 0; i < 4 && at.th * 4 + i < s.height; ++i) {
        for (int64_t j = 0; j < 4 && at.tw * 4 + j < s.width; ++j) {
          Store(y + ((at.b * s.height + at.th * 4 + i) * s.width + at.tw * 4 + j) * O + c * kLanes, r[i * 4 + j]);
        }
      }
    }
  }
}

struct Scratch {
  std::vector<float> v, m;  // a block's V and M
};

// y for tiles [first, first + count) and kernel panels [p_begin, p_end), all three steps on one core with V and M
// in its cache.
void Block(const Shape& s, const float* x, const float* u, int64_t first, int64_t count, int64_t p_begin,
           int64_t p_end, float* y, Scratch& scratch) {
  scratch.v.resize(kFreqs * (count + kRows - 1) / kRows * kRows * s.in_channels);
  scratch.m.resize(kFreqs * count * s.out_channels);
  const Tiles tiles{first, count, scratch.v.data(), scratch.m.data()};
  TransformInputs(s, x, tiles);
  Products(s, u, tiles, p_begin, p_end);
  TransformOutputs(s, tiles, p_begin * kPanel, p_end * kPanel, y);
}

ffi::Future Conv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                 ffi::ResultBuffer<ffi::F32> y, bool transposed) {
  const auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y->dimensions();
  const int64_t C = xd.size() == 4 ? xd[3] : 0, O = yd.size() == 4 ? yd[3] : 0;
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[1] != yd[1] || xd[2] != yd[2] ||
      kd[0] != 3 || kd[1] != 3 || kd[2] != (transposed ? O : C) || kd[3] != (transposed ? C : O))
    return pdm_jax::Completed(ffi::Error::InvalidArgument(
        "pdm winograd conv: x, kernel and y must be (B, H, W, C), (3, 3, C, O) ((3, 3, O, C) transposed) and "
        "(B, H, W, O)"));
  if (C % kLanes != 0 || O % kPanel != 0)
    return pdm_jax::Completed(ffi::Error::InvalidArgument(
        "pdm winograd conv: input channels must be a multiple of 16 and output channels of 32"));
  const Shape s{xd[0], xd[1], xd[2], C, O, transposed};
  const int64_t tiles = s.tiles(), threads = std::max<int64_t>(pool.num_threads(), 1), panels = O / kPanel;
  // Blocks of whole register tiles whose V and M fit kBlockBytes, at least 4 per thread where there are enough
  // tiles; with fewer (small images or batches), the kernel panels are split among items too, each transforming
  // its block's inputs again (a small cost next to the products).
  const int64_t group_bytes = kFreqs * kRows * (C + O) * int64_t{sizeof(float)};
  const int64_t cache_groups = std::max<int64_t>(1, kBlockBytes / group_bytes);
  const int64_t all_groups = (tiles + kRows - 1) / kRows;
  const int64_t block = std::max<int64_t>(1, std::min(cache_groups, all_groups / (4 * threads))) * kRows;
  const int64_t blocks = (tiles + block - 1) / block;
  const int64_t splits = std::min(panels, (4 * threads + blocks - 1) / blocks);
  // Items, claimed in order: [0, panels) transform the kernel, one panel each; the rest compute a block x split once
  // all are done. Every transforming item has been claimed by a running task before any item waits for it.
  struct Transformed {
    explicit Transformed(int64_t size) : u(size) {}
    pdm_jax::Buffer u;
    std::atomic<int64_t> done{0};
  };
  auto transformed = std::make_shared<Transformed>(kFreqs * C * O);
  const float *xp = x.typed_data(), *kp = kernel.typed_data();
  float* out = y->typed_data();
  return pdm_jax::ParallelForAsync<Scratch>(
      pool, tiles == 0 ? 0 : panels + blocks * splits,
      [s, xp, kp, out, transformed, block, tiles, panels, splits](int64_t item, Scratch& scratch) {
        if (item < panels) {
          TransformPanel(s, kp, item, transformed->u.get());
          transformed->done.fetch_add(1, std::memory_order_release);
          return;
        }
        pdm_jax::WaitFor(transformed->done, panels);
        const int64_t first = (item - panels) / splits * block, split = (item - panels) % splits;
        Block(s, xp, transformed->u.get(), first, std::min(block, tiles - first), panels * split / splits,
              panels * (split + 1) / splits, out, scratch);
      });
}

// The kernel gradient. With V = BT d B for each tile's input and y = AT (U . V) A, the gradient of U is
// dU = sum over tiles of V . (A dy AT) (per frequency, a matrix product over the tiles: C x tiles times tiles x O),
// and that of the kernel dw = GT dU G: 36 products per tile and channel pair instead of 144 again.

// A dy AT: four vectors at stride `step` (one column or row of dy's 4x4 tile) to six at stride `out_step`.
inline void GradOutputTransform(const Vec* y, int64_t step, Vec* out, int64_t out_step) {
  const Vec y0 = y[0], y1 = y[step], y2 = y[2 * step], y3 = y[3 * step];
  const Vec even = y0 + y2, odd = y1 + y3;
  const Vec even4 = y0 + Splat(4.f) * y2, odd8 = Splat(2.f) * y1 + Splat(8.f) * y3;
  out[0] = y0;
  out[out_step] = even + odd;
  out[2 * out_step] = even - odd;
  out[3 * out_step] = even4 + odd8;
  out[4 * out_step] = even4 - odd8;
  out[5 * out_step] = y3;
}

// GT du: six vectors at stride `step` to three at stride `out_step`.
inline void KernelGradTransform(const Vec* u, int64_t step, Vec* out, int64_t out_step) {
  const Vec u0 = u[0], s12 = u[step] + u[2 * step], d12 = u[step] - u[2 * step];
  const Vec s34 = u[3 * step] + u[4 * step], d34 = u[3 * step] - u[4 * step];
  out[0] = Splat(1.f / 4) * u0 - Splat(1.f / 6) * s12 + Splat(1.f / 24) * s34;
  out[out_step] = Splat(1.f / 12) * d34 - Splat(1.f / 6) * d12;
  out[2 * out_step] = Splat(1.f / 6) * (s34 - s12) + u[5 * step];
}

constexpr int64_t kRoundTiles = 256;  // tiles per round: the depth of each frequency's product

// One round's transformed tiles [first, first + count), count <= rows (a multiple of kLanes), tiles past the count
// zero. v: frequency f, tile k, input channels at (f * rows + k) * C. dm: frequency f, tile k, output channels
// [32p, 32p + 32) at ((f * panels + p) * rows + k) * 32.
struct Round {
  int64_t rows;
  float* v;
  float* dm;
};

// v and dm of the round's tiles [16q, 16q + 16).
void TransformGradInputs(const Shape& s, const float* x, const float* dy, const Round& round, int64_t first_tile,
                         int64_t count, int64_t q) {
  const int64_t C = s.in_channels, O = s.out_channels, panels = O / kPanel;
  for (int64_t l = 0; l < kLanes; ++l) {
    const int64_t k = q * kLanes + l;
    const bool present = k < count;
    const TilePosition at(s, first_tile + k);
    for (int64_t c = 0; c < C / kLanes; ++c) {
      Vec v[36] = {};
      if (present) TransformedInputTile(s, x, at, c, v);
      for (int64_t f = 0; f < kFreqs; ++f) Store(round.v + (f * round.rows + k) * C + c * kLanes, v[f]);
    }
    for (int64_t c = 0; c < O / kLanes; ++c) {
      Vec d[36] = {}, e[24];
      if (present) {
        Vec t[16] = {};
        for (int64_t i = 0; i < 4 && at.th * 4 + i < s.height; ++i)
          for (int64_t j = 0; j < 4 && at.tw * 4 + j < s.width; ++j)
            t[i * 4 + j] = Load(dy + ((at.b * s.height + at.th * 4 + i) * s.width + at.tw * 4 + j) * O + c * kLanes);
        for (int64_t j = 0; j < 4; ++j) GradOutputTransform(t + j, 4, e + j, 4);      // columns: e is 6 x 4
        for (int64_t i = 0; i < 6; ++i) GradOutputTransform(e + i * 4, 1, d + i * 6, 1);  // rows: d is 6 x 6
      }
      for (int64_t f = 0; f < kFreqs; ++f)
        Store(round.dm + ((f * panels + c / kVectors) * round.rows + k) * kPanel + c % kVectors * kLanes, d[f]);
    }
  }
}

ffi::Future WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                       ffi::ResultBuffer<ffi::F32> dw) {
  const auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  const int64_t C = xd.size() == 4 ? xd[3] : 0, O = yd.size() == 4 ? yd[3] : 0;
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4 || xd[0] != yd[0] || xd[1] != yd[1] || xd[2] != yd[2] ||
      wd[0] != 3 || wd[1] != 3 || wd[2] != C || wd[3] != O)
    return pdm_jax::Completed(ffi::Error::InvalidArgument(
        "pdm winograd weight grad: x, dy and dw must be (B, H, W, C), (B, H, W, O) and (3, 3, C, O)"));
  if (C % kLanes != 0 || O % kPanel != 0)
    return pdm_jax::Completed(ffi::Error::InvalidArgument(
        "pdm winograd weight grad: input channels must be a multiple of 16 and output channels of 32"));
  const Shape s{xd[0], xd[1], xd[2], C, O, false};
  const int64_t tiles = s.tiles(), channel_groups = (C + kRows - 1) / kRows, panels = O / kPanel;
  // Rounds of up to kRoundTiles tiles, one after the other: the inputs are transformed (one item per 16 tiles),
  // then one item per frequency adds the round's product to its dU; items of the next round start once that is
  // done (they reuse the buffers). Each dU is summed in the same order whatever the threads' timing, so a run
  // repeats bit for bit. Last, items of 16 input channels each turn dU into dw.
  const int64_t rows = std::min((tiles + kLanes - 1) / kLanes, kRoundTiles / kLanes) * kLanes;
  const int64_t rounds = (tiles + rows - 1) / rows, chunks = rows / kLanes, per_round = chunks + kFreqs;
  struct State {
    State(int64_t v_size, int64_t dm_size, int64_t du_size) : v(v_size), dm(dm_size), du(du_size) {}
    pdm_jax::Buffer v, dm, du;
    std::atomic<int64_t> transformed{0}, multiplied{0};
  };
  auto state = std::make_shared<State>(kFreqs * rows * C, kFreqs * O * rows, kFreqs * C * O);
  const float *xp = x.typed_data(), *dp = dy.typed_data();
  float* out = dw->typed_data();
  return pdm_jax::ParallelForAsync<Scratch>(
      pool, tiles == 0 ? 0 : rounds * per_round + C / kLanes,
      [s, xp, dp, out, state, tiles, rows, rounds, chunks, per_round, channel_groups, panels](
          int64_t item, Scratch&) {
        const int64_t C = s.in_channels, O = s.out_channels;
        const Round round{rows, state->v.get(), state->dm.get()};
        if (item < rounds * per_round) {
          const int64_t r = item / per_round, j = item % per_round, first = r * rows;
          if (j < chunks) {
            pdm_jax::WaitFor(state->multiplied, r * kFreqs);
            TransformGradInputs(s, xp, dp, round, first, std::min(rows, tiles - first), j);
            state->transformed.fetch_add(1, std::memory_order_release);
            return;
          }
          const int64_t f = j - chunks;
          pdm_jax::WaitFor(state->transformed, (r + 1) * chunks);
          float* du = state->du.get() + f * C * O;
          for (int64_t g = 0; g < channel_groups; ++g)
            for (int64_t p = 0; p < panels; ++p)
              ProductRows<1>(std::min(kRows, C - g * kRows), round.v + f * rows * C + g * kRows, C, kLanes * C,
                             round.dm + (f * panels + p) * rows * kPanel, rows, O, r > 0,
                             du + g * kRows * O + p * kPanel);
          state->multiplied.fetch_add(1, std::memory_order_release);
          return;
        }
        pdm_jax::WaitFor(state->multiplied, rounds * kFreqs);
        const int64_t c0 = (item - rounds * per_round) * kLanes;
        for (int64_t c = c0; c < c0 + kLanes; ++c) {
          for (int64_t o = 0; o < O; o += kLanes) {
            Vec u[36], t[18], w[9];
            for (int64_t f = 0; f < kFreqs; ++f) u[f] = Load(state->du.get() + (f * C + c) * O + o);
            for (int64_t b = 0; b < 6; ++b) KernelGradTransform(u + b, 6, t + b, 6);      // columns: t is 3 x 6
            for (int64_t i = 0; i < 3; ++i) KernelGradTransform(t + i * 6, 1, w + i * 3, 1);  // rows: w is 3 x 3
            for (int64_t tap = 0; tap < 9; ++tap) Store(out + (tap * C + c) * O + o, w[tap]);
          }
        }
      });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PdmWinogradConv, Conv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<bool>("transposed"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PdmWinogradWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dw
