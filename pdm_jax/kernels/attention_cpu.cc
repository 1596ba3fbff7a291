// Fused scaled dot-product attention for XLA:CPU, called through the XLA FFI (pdm_jax/kernels/attention_cpu.py).
//
// Why: with the UNet's small heads (the reference has 32 heads of 8 at 16x16), XLA runs attention as many tiny
// matrix products and elementwise passes over the (queries x keys) weights. Here each (image, head) pair is one
// task on XLA's own thread pool; a query row's logits and softmax weights stay in cache, and nothing of size
// queries x keys reaches memory, forward or backward (the backward recomputes the weights, as flash attention does).
//
// Layouts (float32, row-major), those of the model, so that XLA needs no transposes around the call:
//   queries q (B, Lq, N, D); keys k and values v (B, Lk, N, D); attribute `scale` multiplies the logits
//   output out (B, Lq, N, D) and log_sum_exp (B, N, Lq): the softmax's log normaliser per query, for the backward
//   backward dq (B, Lq, N, D), dk and dv (B, Lk, N, D)
// Inside a task a pair's keys and values are transposed to (D, Lk padded to kLanes) so that a row of logits is
// computed kLanes keys at a time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel_for.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using pdm_jax::kLanes;
using pdm_jax::Load;
using pdm_jax::Store;
using pdm_jax::Vec;

namespace {

typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec Splat(float x) { return Vec{} + x; }
inline Vec Max(Vec a, Vec b) { return a > b ? a : b; }
inline float HorizontalSum(Vec v) {
  float s = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
inline float HorizontalMax(Vec v) {
  float m = v[0];
  for (int64_t i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}

// exp(x) for x <= 0 (a logit minus an upper bound of its row), 0 for x = -inf.
// exp(x) = 2^n * 2^f with n = round(x log2 e) and |f| <= 1/2; 2^f is the degree-6 Taylor polynomial of
// exp(f ln 2), within 1.2e-7 relative there (about one float ulp). Plain vector code: on Zen 4 it ran the backward
// 1.5x faster than AVX-512's own rounding and scaling instructions.
inline Vec ExpNonPositive(Vec x) {
  const Vec t = Max(x, Splat(-150.f)) * 1.44269504088896341f;  // also maps -inf to a finite value
  const IVec n = __builtin_convertvector(t - 0.5f, IVec);       // t <= 0: truncating t - 1/2 rounds to nearest
  const Vec y = (t - __builtin_convertvector(n, Vec)) * 0.693147180559945309f;
  Vec p = Splat(1.f / 720.f);
  p = p * y + 1.f / 120.f;
  p = p * y + 1.f / 24.f;
  p = p * y + 1.f / 6.f;
  p = p * y + 0.5f;
  p = p * y + 1.f;
  p = p * y + 1.f;
  const IVec bits = ((n < -126 ? IVec{} - 127 : n) + 127) << 23;  // 2^n; 0 (exponent field 0) below 2^-126
  Vec scale;
  std::memcpy(&scale, &bits, sizeof(Vec));
  return p * scale;
}

struct Dims {
  int64_t batch, query_len, key_len, heads, head_dim;
  float scale;
  int64_t padded() const { return (key_len + kLanes - 1) / kLanes * kLanes; }
  int64_t tiles() const { return padded() / kLanes; }
  // 0 in a real key's lane of the last tile, -inf in a padding lane: added to that tile's logits.
  Vec TailMask() const {
    Vec mask = Splat(0.f);
    for (int64_t lane = 0; lane < kLanes; ++lane)
      if ((tiles() - 1) * kLanes + lane >= key_len) mask[lane] = -INFINITY;
    return mask;
  }
  // Offset of token t's head h in image b of a (B, L, N, D) array with sequence length length.
  int64_t Row(int64_t b, int64_t t, int64_t h, int64_t length) const {
    return ((b * length + t) * heads + h) * head_dim;
  }
};

// A task's working memory, reused across the pairs it computes. Vec vectors are 64-byte aligned (C++17).
struct Scratch {
  std::vector<Vec> keys, values;          // (D, padded keys) as rows of Vecs
  std::vector<Vec> d_keys, d_values;      // the same, for the backward's accumulators
  std::vector<Vec> row;                   // a row of logits (forward)
  std::vector<Vec> weights, d_logits;     // (query block, padded keys) (backward)
  std::vector<Vec> q, d_out, accumulators;  // per-dimension broadcasts and sums for head sizes not compiled in
};

// (L, D) rows of one head, strided in a (B, L, N, D) array, to (D, padded L) in out; zeros in the padding.
void Transpose(const Dims& dims, const float* x, int64_t b, int64_t h, std::vector<Vec>& out) {
  const int64_t padded = dims.padded(), D = dims.head_dim;
  out.assign(D * dims.tiles(), Splat(0.f));
  float* o = reinterpret_cast<float*>(out.data());
  for (int64_t t = 0; t < dims.key_len; ++t) {
    const float* row = x + dims.Row(b, t, h, dims.key_len);
    for (int64_t d = 0; d < D; ++d) o[d * padded + t] = row[d];
  }
}

// The inverse of Transpose for gradients: (D, padded L) to the pair's rows of a (B, L, N, D) array.
void Untranspose(const Dims& dims, const std::vector<Vec>& in, int64_t b, int64_t h, float* x) {
  const int64_t padded = dims.padded(), D = dims.head_dim;
  const float* i = reinterpret_cast<const float*>(in.data());
  for (int64_t t = 0; t < dims.key_len; ++t) {
    float* row = x + dims.Row(b, t, h, dims.key_len);
    for (int64_t d = 0; d < D; ++d) row[d] = i[d * padded + t];
  }
}

// Per-dimension vectors: in registers when the head size kD is compiled in, else in scratch.
template <int64_t kD>
struct PerDim {
  Vec local[kD > 0 ? kD : 1];
  Vec* v;
  PerDim(std::vector<Vec>& fallback, int64_t D) {
    if (kD > 0) {
      v = local;
    } else {
      fallback.resize(D);
      v = fallback.data();
    }
  }
  Vec& operator[](int64_t d) { return v[d]; }
};

// One (image, head) pair: every query's output row and log normaliser.
template <int64_t kD>
void ForwardPair(const Dims& dims, int64_t pair, const float* q, const float* k, const float* v, float* out,
                 float* log_sum_exp, Scratch& scratch) {
  const int64_t D = kD > 0 ? kD : dims.head_dim, tiles = dims.tiles();
  const int64_t b = pair / dims.heads, h = pair % dims.heads;
  Transpose(dims, k, b, h, scratch.keys);
  Transpose(dims, v, b, h, scratch.values);
  const Vec *keys = scratch.keys.data(), *values = scratch.values.data();
  scratch.row.resize(tiles);
  Vec* logits = scratch.row.data();
  const Vec tail = dims.TailMask();
  PerDim<kD> qv(scratch.q, D), acc(scratch.accumulators, D);
  for (int64_t i = 0; i < dims.query_len; ++i) {
    const int64_t row = dims.Row(b, i, h, dims.query_len);
    for (int64_t d = 0; d < D; ++d) qv[d] = Splat(q[row + d] * dims.scale);
    Vec row_max = Splat(-INFINITY);
    for (int64_t j = 0; j < tiles; ++j) {
      Vec s = qv[0] * keys[j];
      for (int64_t d = 1; d < D; ++d) s += qv[d] * keys[d * tiles + j];
      if (j == tiles - 1) s += tail;
      logits[j] = s;
      row_max = Max(row_max, s);
    }
    const float m = HorizontalMax(row_max);
    Vec row_sum = Splat(0.f);
    for (int64_t d = 0; d < D; ++d) acc[d] = Splat(0.f);
    for (int64_t j = 0; j < tiles; ++j) {
      const Vec p = ExpNonPositive(logits[j] - m);
      row_sum += p;
      for (int64_t d = 0; d < D; ++d) acc[d] += p * values[d * tiles + j];
    }
    const float l = HorizontalSum(row_sum);
    for (int64_t d = 0; d < D; ++d) out[row + d] = HorizontalSum(acc[d]) / l;
    log_sum_exp[pair * dims.query_len + i] = m + std::log(l);
  }
}

// One (image, head) pair of the backward pass, a block of queries at a time: first each query's weights p and
// logit gradients ds (kept for the block) and its query gradient; then the key and value gradients
// dk = sum_i ds_i q_i and dv = sum_i p_i do_i, key tile by key tile with the sums in registers.
template <int64_t kD>
void BackwardPair(const Dims& dims, int64_t pair, const float* q, const float* k, const float* v, const float* out,
                  const float* log_sum_exp, const float* d_out, float* dq, float* dk, float* dv, Scratch& scratch) {
  const int64_t D = kD > 0 ? kD : dims.head_dim, tiles = dims.tiles();
  const int64_t b = pair / dims.heads, h = pair % dims.heads;
  Transpose(dims, k, b, h, scratch.keys);
  Transpose(dims, v, b, h, scratch.values);
  const Vec *keys = scratch.keys.data(), *values = scratch.values.data();
  scratch.d_keys.assign(D * tiles, Splat(0.f));
  scratch.d_values.assign(D * tiles, Splat(0.f));
  Vec *d_keys = scratch.d_keys.data(), *d_values = scratch.d_values.data();
  // Queries per block: its weights and logit gradients (2 x block x padded keys floats) stay within ~256 KiB.
  const int64_t block = std::max<int64_t>(4, std::min<int64_t>(64, 32768 / dims.padded()));
  scratch.weights.resize(block * tiles);
  scratch.d_logits.resize(block * tiles);
  Vec *weights = scratch.weights.data(), *d_logits = scratch.d_logits.data();
  const Vec tail = dims.TailMask();
  PerDim<kD> qv(scratch.q, D), dov(scratch.d_out, D), acc(scratch.accumulators, D);
  for (int64_t start = 0; start < dims.query_len; start += block) {
    const int64_t rows = std::min(block, dims.query_len - start);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = start + r, row = dims.Row(b, i, h, dims.query_len);
      float d_out_dot_out = 0.f;  // sum_k p_k dp_k, the softmax backward's row term
      for (int64_t d = 0; d < D; ++d) {
        d_out_dot_out += d_out[row + d] * out[row + d];
        qv[d] = Splat(q[row + d] * dims.scale);
        dov[d] = Splat(d_out[row + d]);
        acc[d] = Splat(0.f);
      }
      const float lse = log_sum_exp[pair * dims.query_len + i];
      for (int64_t j = 0; j < tiles; ++j) {
        Vec s = qv[0] * keys[j], dp = dov[0] * values[j];
        for (int64_t d = 1; d < D; ++d) {
          s += qv[d] * keys[d * tiles + j];
          dp += dov[d] * values[d * tiles + j];
        }
        if (j == tiles - 1) s += tail;
        const Vec p = ExpNonPositive(s - lse);
        const Vec ds = p * (dp - d_out_dot_out);
        weights[r * tiles + j] = p;
        d_logits[r * tiles + j] = ds;
        for (int64_t d = 0; d < D; ++d) acc[d] += ds * keys[d * tiles + j];
      }
      for (int64_t d = 0; d < D; ++d) dq[row + d] = HorizontalSum(acc[d]) * dims.scale;
    }
    for (int64_t j = 0; j < tiles; ++j) {
      for (int64_t d = 0; d < D; ++d) {
        qv[d] = d_keys[d * tiles + j];  // reused as the tile's key and value gradient sums
        dov[d] = d_values[d * tiles + j];
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = dims.Row(b, start + r, h, dims.query_len);
        const Vec ds = d_logits[r * tiles + j] * dims.scale, p = weights[r * tiles + j];
        for (int64_t d = 0; d < D; ++d) {
          qv[d] += ds * q[row + d];
          dov[d] += p * d_out[row + d];
        }
      }
      for (int64_t d = 0; d < D; ++d) {
        d_keys[d * tiles + j] = qv[d];
        d_values[d * tiles + j] = dov[d];
      }
    }
  }
  Untranspose(dims, scratch.d_keys, b, h, dk);
  Untranspose(dims, scratch.d_values, b, h, dv);
}

// Calls Kernel<head size>::Run, with the head size compiled in where it is a common one.
template <template <int64_t> class Kernel, typename... Args>
void ForHeadDim(int64_t head_dim, Args&&... args) {
  switch (head_dim) {
    case 8: Kernel<8>::Run(args...); break;
    case 16: Kernel<16>::Run(args...); break;
    case 32: Kernel<32>::Run(args...); break;
    default: Kernel<0>::Run(args...);
  }
}
template <int64_t kD>
struct ForwardKernel {
  template <typename... Args>
  static void Run(Args&&... args) { ForwardPair<kD>(args...); }
};
template <int64_t kD>
struct BackwardKernel {
  template <typename... Args>
  static void Run(Args&&... args) { BackwardPair<kD>(args...); }
};

ffi::Error CheckDims(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::F32>& v, float scale,
                     Dims* dims) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("pdm attention: queries, keys and values must be (B, L, N, D)");
  for (int64_t i = 0; i < 4; ++i)
    if (kd[i] != vd[i] || (i != 1 && kd[i] != qd[i]))
      return ffi::Error::InvalidArgument("pdm attention: keys and values must be (B, Lk, N, D) for (B, Lq, N, D) "
                                         "queries");
  if (kd[1] < 1) return ffi::Error::InvalidArgument("pdm attention: no keys");
  *dims = Dims{qd[0], qd[1], kd[1], qd[2], qd[3], scale};
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> log_sum_exp, float scale) {
  Dims dims;
  if (ffi::Error error = CheckDims(q, k, v, scale, &dims); error.failure()) return error;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = out->typed_data(), *lp = log_sum_exp->typed_data();
  pdm_jax::ParallelFor<Scratch>(pool, dims.batch * dims.heads, [&](int64_t pair, Scratch& scratch) {
    ForHeadDim<ForwardKernel>(dims.head_dim, dims, pair, qp, kp, vp, op, lp, scratch);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> log_sum_exp, ffi::Buffer<ffi::F32> d_out,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                    float scale) {
  Dims dims;
  if (ffi::Error error = CheckDims(q, k, v, scale, &dims); error.failure()) return error;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(), *op = out.typed_data();
  const float *lp = log_sum_exp.typed_data(), *dop = d_out.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  pdm_jax::ParallelFor<Scratch>(pool, dims.batch * dims.heads, [&](int64_t pair, Scratch& scratch) {
    ForHeadDim<BackwardKernel>(dims.head_dim, dims, pair, qp, kp, vp, op, lp, dop, dqp, dkp, dvp, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PdmAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // log_sum_exp
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PdmAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::F32>>()  // out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // log_sum_exp
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dv
                                  .Attr<float>("scale"));
