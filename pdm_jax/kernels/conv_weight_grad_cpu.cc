// The kernel (weight) gradient of a stride-1 convolution for XLA:CPU, called through the XLA FFI
// (pdm_jax/kernels/conv_weight_grad_cpu.py).
//
// Why: XLA:CPU has library kernels only for forward convolutions, so the weight gradient ran as one with the
// batch as input channels, after transposing the input to (C, H, W, B): ~1.3 s of the reference's ~6 s train
// step at batch 32, at 150-220 GFLOP/s. The gradient is a sum over positions of outer products, one matrix
// product per tap:
//   dw[i, j, c, o] = sum over b, h, w of x[b, h + i - top, w + j - left, c] * dy[b, h, w, o]
// (x positions outside the image are the zero padding and contribute nothing). Here no transpose is needed: a
// block of output lines and the input lines it reaches are copied into panels (one tile's channels contiguous per
// position), and a register tile of kRows input channels x kVectors * kLanes output channels accumulates, position
// by position, the products of x's channels (broadcast) and dy's (vectors), for every tap of the block.
//
// Layouts (float32, row-major): x (B, H, W, C); dy (B, H', W', O) with O a multiple of kLanes; dw (kh, kw, C, O).
// Attributes: kh, kw, top, left (H' = H + top + bottom - kh + 1 fixes bottom, and likewise right).
// Threads: kParts fixed ranges of output lines (b, h), each summed into its own copy of dw, the copies added in a
// fixed order, so that the result does not depend on the threads' timing.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "parallel_for.h"
#include "register_tile.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using pdm_jax::kLanes;

namespace {

#ifdef __AVX512F__
constexpr int64_t kRows = 12, kVectors = 2;  // 24 accumulators of 32 registers
#else
constexpr int64_t kRows = 4, kVectors = 1;  // 8 accumulators (16 ymm registers) where a Vec is two registers
#endif

constexpr int64_t kParts = 8;  // ranges of lines: enough to keep 8 threads busy; each costs a copy of dw

struct Shape {
  int64_t batch, height, width, in_channels;    // x
  int64_t out_height, out_width, out_channels;  // dy
  int64_t kh, kw, top, left;
};

// A run of consecutive positions of one output line for one tap: x rows from x_row, dy rows from dy_row.
struct Segment {
  int64_t x_row, dy_row, count;
};

// The segments of lines [line_begin, line_end) for tap (i, j); a line is (b, h) of dy.
void Segments(const Shape& s, int64_t i, int64_t j, int64_t line_begin, int64_t line_end,
              std::vector<Segment>& out) {
  out.clear();
  const int64_t w_begin = std::max<int64_t>(0, s.left - j);
  const int64_t w_end = std::min(s.out_width, s.width + s.left - j);
  if (w_end <= w_begin) return;
  for (int64_t line = line_begin; line < line_end; ++line) {
    const int64_t b = line / s.out_height, h = line % s.out_height;
    const int64_t x_h = h + i - s.top;
    if (x_h < 0 || x_h >= s.height) continue;
    out.push_back({(b * s.height + x_h) * s.width + w_begin + j - s.left, line * s.out_width + w_begin,
                   w_end - w_begin});
  }
}

// dw_tile (rows x vectors * kLanes, row stride O) += the sum over the segments' positions of the outer products of
// a row of x (rows channels, broadcast) and a row of dy (vectors * kLanes channels). x and dy are packed panels:
// position p's rows at x + p * rows and dy + p * vectors * kLanes.
template <int64_t rows, int64_t vectors>
void Tile(const std::vector<Segment>& segments, const float* x, const float* dy, int64_t O, float* dw_tile) {
  pdm_jax::RegisterTile<rows, vectors> tile;
  tile.Load(dw_tile, O);
  for (const Segment& segment : segments) {
    const float* xp = x + segment.x_row * rows;
    const float* dp = dy + segment.dy_row * vectors * kLanes;
    for (int64_t n = 0; n < segment.count; ++n, xp += rows, dp += vectors * kLanes) tile.template Step<1>(xp, dp);
  }
  tile.Store(dw_tile, O);
}

// Tile with the row count known at compile time: kRows, or the remainder of the channels.
template <int64_t vectors, int64_t rows = kRows>
void TileRows(int64_t n, const std::vector<Segment>& segments, const float* x, const float* dy, int64_t O,
              float* dw_tile) {
  if constexpr (rows > 1) {
    if (n < rows) return TileRows<vectors, rows - 1>(n, segments, x, dy, O, dw_tile);
  }
  Tile<rows, vectors>(segments, x, dy, O, dw_tile);
}

// Rows [first, first + count) of a (positions, channels) array as consecutive panels of `width` channels (the last
// narrower): the panel of channels [c0, c0 + w) at out + c0 * count, position p's at + (p - first) * w.
void Pack(const float* in, int64_t channels, int64_t first, int64_t count, int64_t width, std::vector<float>& out) {
  out.resize(count * channels);
  for (int64_t c0 = 0; c0 < channels; c0 += width) {
    const int64_t w = std::min(width, channels - c0);
    float* panel = out.data() + c0 * count;
    for (int64_t p = 0; p < count; ++p)
      std::memcpy(panel + p * w, in + (first + p) * channels + c0, w * sizeof(float));
  }
}

// A task's working memory: the segments of each tap and the packed rows of a block.
struct Scratch {
  std::vector<std::vector<Segment>> segments;
  std::vector<float> x, dy;
};

// dw += the gradient over lines [line_begin, line_end), in blocks of lines whose rows of x and dy, packed, stay
// in cache while every tap and tile uses them.
void Lines(const Shape& s, const float* x, const float* dy, int64_t line_begin, int64_t line_end, float* dw,
           Scratch& scratch) {
  const int64_t C = s.in_channels, O = s.out_channels, taps = s.kh * s.kw;
  const int64_t block = std::max<int64_t>(1, (int64_t{1} << 17) / (s.out_width * std::max(C, O)));
  scratch.segments.resize(taps);
  for (int64_t begin = line_begin; begin < line_end; begin += block) {
    const int64_t end = std::min(line_end, begin + block);
    int64_t x_first = INT64_MAX, x_end = 0;
    for (int64_t tap = 0; tap < taps; ++tap) {
      Segments(s, tap / s.kw, tap % s.kw, begin, end, scratch.segments[tap]);
      for (const Segment& segment : scratch.segments[tap]) {
        x_first = std::min(x_first, segment.x_row);
        x_end = std::max(x_end, segment.x_row + segment.count);
      }
    }
    if (x_end <= x_first) continue;
    const int64_t dy_first = begin * s.out_width, dy_count = (end - begin) * s.out_width;
    Pack(x, C, x_first, x_end - x_first, kRows, scratch.x);
    Pack(dy, O, dy_first, dy_count, kVectors * kLanes, scratch.dy);
    for (int64_t tap = 0; tap < taps; ++tap) {
      std::vector<Segment>& segments = scratch.segments[tap];
      for (Segment& segment : segments) {  // rows relative to the packed block
        segment.x_row -= x_first;
        segment.dy_row -= dy_first;
      }
      float* dw_tap = dw + tap * C * O;
      for (int64_t c0 = 0; c0 < C; c0 += kRows) {
        const int64_t rows = std::min(kRows, C - c0);
        const float* x_panel = scratch.x.data() + c0 * (x_end - x_first);
        for (int64_t o0 = 0; o0 < O; o0 += kVectors * kLanes) {
          const float* dy_panel = scratch.dy.data() + o0 * dy_count;
          if (o0 + kVectors * kLanes <= O) {
            TileRows<kVectors>(rows, segments, x_panel, dy_panel, O, dw_tap + c0 * O + o0);
          } else {  // the last kLanes channels when O is an odd multiple of kLanes
            TileRows<1>(rows, segments, x_panel, dy_panel, O, dw_tap + c0 * O + o0);
          }
        }
      }
    }
  }
}

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t kh, int64_t kw, int64_t top, int64_t left) {
  const auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4 || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("pdm conv weight grad: x and dy must be (B, H, W, C) and (B, H', W', O)");
  const Shape s{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], kh, kw, top, left};
  if (wd[0] != kh || wd[1] != kw || wd[2] != s.in_channels || wd[3] != s.out_channels)
    return ffi::Error::InvalidArgument("pdm conv weight grad: dw must be (kh, kw, C, O)");
  if (s.out_channels % kLanes != 0)
    return ffi::Error::InvalidArgument("pdm conv weight grad: output channels must be a multiple of 16");
  const int64_t size = kh * kw * s.in_channels * s.out_channels;
  float* out = dw->typed_data();
  std::fill(out, out + size, 0.f);
  // A fixed split of the lines into kParts ranges, each summed into its own copy of dw (the first into dw itself)
  // and the copies added in order: the result depends on the shapes only, not on which thread ran which range, so
  // a run repeats bit for bit. Tasks claim ranges as they become free (the pool may be busy with other work).
  const int64_t lines = s.batch * s.out_height;
  const int64_t parts = std::min(lines, kParts);
  std::vector<std::vector<float>> partial(parts);
  const float *xp = x.typed_data(), *dp = dy.typed_data();
  pdm_jax::ParallelFor<Scratch>(pool, parts, [&](int64_t part, Scratch& scratch) {
    float* sum = out;
    if (part > 0) {
      partial[part].assign(size, 0.f);
      sum = partial[part].data();
    }
    Lines(s, xp, dp, lines * part / parts, lines * (part + 1) / parts, sum, scratch);
  });
  for (int64_t part = 1; part < parts; ++part)
    for (int64_t i = 0; i < size; ++i) out[i] += partial[part][i];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PdmConvWeightGrad, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dw
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left"));
