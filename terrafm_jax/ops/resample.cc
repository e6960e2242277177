// Separable resampling of crop boxes for XLA:CPU through the typed FFI (issue #9).
//
// The train step cuts every view out of its tile and resizes it with jax.image's antialiased
// cubic filter (train/device_crops.py). jax.image contracts the whole tile with dense
// (tile x out) weight matrices: for a 224-px view of a 256-px tile that is ~0.66 GFLOP, of which
// all but a few taps per output pixel multiply zeros. This kernel takes the same weight matrices
// (computed by jax.image's own code) and sums, per output row and column, only the input rows
// and columns between the first and last non-zero weight.
//
//   img (B, T, S, C), wy (B, V, T, O), wx (B, V, S, O)  ->  out (B, V, O, O, C)
//   out[b, v, i, j, c] = sum_r sum_x wy[b, v, r, i] * wx[b, v, x, j] * img[b, r, x, c]
//
// Rows first (into a per-thread buffer of the columns any output column reads), then columns.
// One (sample, view) pair per task over XLA's intra-op thread pool; each pair is computed whole
// by one thread. Pixels outside every band are never read, so a NaN there does not reach the
// output (the dense contraction would spread it: 0 * NaN = NaN).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;

namespace {

using Images = ffi::Buffer<ffi::F32, 4>;   // (B, T, S, C)
using Weights = ffi::Buffer<ffi::F32, 4>;  // (B, V, T or S, O)
using ViewsBuffer = ffi::Buffer<ffi::F32, 5>;
using Views = ffi::ResultBuffer<ffi::F32, 5>;

// [lo, hi) of the non-zero weights of output index o in a (size, outs) matrix (empty: lo = hi).
void Band(const float* w, int64_t size, int64_t outs, int64_t o, int64_t* lo, int64_t* hi) {
  *lo = 0;
  while (*lo < size && w[*lo * outs + o] == 0.0f) ++*lo;
  *hi = size;
  while (*hi > *lo && w[(*hi - 1) * outs + o] == 0.0f) --*hi;
}

ffi::Error Resample(ffi::ThreadPool pool, Images img, Weights wy, Weights wx, Views out) {
  auto id = img.dimensions(), yd = wy.dimensions(), xd = wx.dimensions();
  const int64_t b = id[0], t = id[1], s = id[2], c = id[3];
  const int64_t v = yd[1], o = yd[3];
  if (yd[0] != b || xd[0] != b || xd[1] != v || yd[2] != t || xd[2] != s || xd[3] != o) {
    return ffi::Error::InvalidArgument("terrafm resample: weight shapes do not match the images");
  }
  const float *pi = img.typed_data(), *py = wy.typed_data(), *px = wx.typed_data();
  float* po = out->typed_data();
  terrafm::ParallelFor(pool, b * v, [=](int64_t pair) {
    const float* image = pi + (pair / v) * t * s * c;
    const float* wrow = py + pair * t * o;
    const float* wcol = px + pair * s * o;
    float* dst = po + pair * o * o * c;
    std::vector<int64_t> col_lo(o), col_hi(o);
    int64_t first = s, last = 0;
    for (int64_t j = 0; j < o; ++j) {
      Band(wcol, s, o, j, &col_lo[j], &col_hi[j]);
      if (col_lo[j] < col_hi[j]) first = std::min(first, col_lo[j]), last = std::max(last, col_hi[j]);
    }
    const int64_t width = std::max<int64_t>(0, last - first), row_len = width * c;
    thread_local std::vector<float> rows;
    rows.assign(o * row_len, 0.0f);
    for (int64_t i = 0; i < o; ++i) {  // rows: rows[i, x, :] = sum_r wy[r, i] img[r, first + x, :]
      int64_t lo, hi;
      Band(wrow, t, o, i, &lo, &hi);
      float* acc = rows.data() + i * row_len;
      for (int64_t r = lo; r < hi; ++r) {
        const float w = wrow[r * o + i];
        const float* src = image + (r * s + first) * c;
#pragma omp simd
        for (int64_t k = 0; k < row_len; ++k) acc[k] += w * src[k];
      }
    }
    for (int64_t i = 0; i < o; ++i) {  // columns: out[i, j, :] = sum_x wx[x, j] rows[i, x, :]
      const float* src = rows.data() + i * row_len;
      for (int64_t j = 0; j < o; ++j) {
        float* px_out = dst + (i * o + j) * c;
        std::fill(px_out, px_out + c, 0.0f);
        for (int64_t x = col_lo[j]; x < col_hi[j]; ++x) {
          const float w = wcol[x * o + j];
          const float* in = src + (x - first) * c;
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) px_out[k] += w * in[k];
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TerrafmResample, Resample,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Images>()
                                  .Arg<Weights>()
                                  .Arg<Weights>()
                                  .Ret<ViewsBuffer>());
