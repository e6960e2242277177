// Fused attention core for XLA:CPU through the typed FFI (issue #9): softmax(scale q k^T) v and
// its backward pass, one (sample, head) pair at a time.
//
// Why: XLA:CPU runs each batched dot of the per-head products (e.g. 192 matrices of
// 197 x 64 x 197 for a ViT-B batch of 16) on one core, and materialises the heads-major copies of
// q, k, v and the (B, H, N, N) intermediates between separate fusions. Here each (b, h) pair is
// one task: its products run through OpenBLAS's single-threaded sgemm and its softmax / dS
// arithmetic on the N x N block while it is in cache; the tasks spread over XLA's intra-op thread
// pool. q, k, v, the output and the gradients stay in the (B, N, H, D) token-major layout of the
// qkv projection (a head's rows are strided by H * D), so no transposes are needed.
//
// Each task is computed whole by one thread, so the results do not depend on the thread count or
// the batch a pair belongs to.
//
//   forward:  P = softmax(scale * Q K^T) (saved for the backward pass), O = P V
//   backward: dV = P^T dO, dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D),
//             dQ = scale * dS K, dK = scale * dS^T Q
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cblas.h"
#include "xla/ffi/api/ffi.h"
#include "parallel_for.h"

namespace ffi = xla::ffi;

// glibc's vector expf (libmvec), which math.h declares only under -ffast-math; the library is
// built without it (no fast-math numerics, no flush-to-zero set on load).
extern "C" float expf(float) __attribute__((simd("notinbranch")));

namespace {

using Tokens = ffi::Buffer<ffi::F32, 4>;          // (B, N, H, D)
using Scores = ffi::Buffer<ffi::F32, 4>;          // (B, H, N, N)
using TokensOut = ffi::ResultBuffer<ffi::F32, 4>;

struct Shape {
  int64_t b, n, h, d;
  int64_t Offset(int64_t pair) const { return (pair / h) * n * h * d + (pair % h) * d; }
  int ld() const { return static_cast<int>(h * d); }
};

ffi::Error CheckShapes(const Tokens& q, const Tokens& k, const Tokens& v, Shape* s) {
  auto qd = q.dimensions();
  *s = Shape{qd[0], qd[1], qd[2], qd[3]};
  for (auto* t : {&k, &v}) {
    auto td = t->dimensions();
    if (!std::equal(td.begin(), td.end(), qd.begin())) {
      return ffi::Error::InvalidArgument("terrafm attention: q, k and v shapes differ");
    }
  }
  return ffi::Error::Success();
}

void SoftmaxRows(float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = p + i * n;
    float mx = row[0];
    for (int64_t j = 1; j < n; ++j) mx = std::max(mx, row[j]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      row[j] = expf(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  }
}

ffi::Error Forward(ffi::ThreadPool pool, Tokens q, Tokens k, Tokens v, TokensOut out,
                   ffi::ResultBuffer<ffi::F32, 4> probs, float scale) {
  Shape s;
  if (auto e = CheckShapes(q, k, v, &s); e.failure()) return e;
  const float *pq = q.typed_data(), *pk = k.typed_data(), *pv = v.typed_data();
  float *po = out->typed_data(), *pp = probs->typed_data();
  const int n = static_cast<int>(s.n), d = static_cast<int>(s.d), ld = s.ld();
  terrafm::ParallelFor(pool, s.b * s.h, [=](int64_t pair) {
    const int64_t t = s.Offset(pair);
    float* p = pp + pair * s.n * s.n;
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, pq + t, ld, pk + t, ld,
                0.0f, p, n);
    SoftmaxRows(p, s.n);
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, p, n, pv + t, ld, 0.0f,
                po + t, ld);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, Tokens q, Tokens k, Tokens v, Tokens out, Scores probs,
                    Tokens d_out, TokensOut dq, TokensOut dk, TokensOut dv, float scale) {
  Shape s;
  if (auto e = CheckShapes(q, k, v, &s); e.failure()) return e;
  const float *pq = q.typed_data(), *pk = k.typed_data(), *pv = v.typed_data();
  const float *po = out.typed_data(), *pp = probs.typed_data(), *pdo = d_out.typed_data();
  float *pdq = dq->typed_data(), *pdk = dk->typed_data(), *pdv = dv->typed_data();
  const int n = static_cast<int>(s.n), d = static_cast<int>(s.d), ld = s.ld();
  terrafm::ParallelFor(pool, s.b * s.h, [=](int64_t pair) {
    thread_local std::vector<float> scratch;
    scratch.resize(s.n * s.n);
    float* ds = scratch.data();
    const int64_t t = s.Offset(pair);
    const float* p = pp + pair * s.n * s.n;
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, p, n, pdo + t, ld, 0.0f,
                pdv + t, ld);
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, pdo + t, ld, pv + t, ld,
                0.0f, ds, n);
    for (int64_t i = 0; i < s.n; ++i) {
      const float* go = pdo + t + i * ld;
      const float* o = po + t + i * ld;
      float row = 0.0f;
#pragma omp simd reduction(+ : row)
      for (int64_t j = 0; j < s.d; ++j) row += go[j] * o[j];
      float* dsi = ds + i * s.n;
      const float* pi = p + i * s.n;
#pragma omp simd
      for (int64_t j = 0; j < s.n; ++j) dsi[j] = pi[j] * (dsi[j] - row);
    }
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, scale, ds, n, pk + t, ld, 0.0f,
                pdq + t, ld);
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, scale, ds, n, pq + t, ld, 0.0f,
                pdk + t, ld);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TerrafmAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Tokens>()
                                  .Arg<Tokens>()
                                  .Arg<Tokens>()
                                  .Ret<Tokens>()
                                  .Ret<Tokens>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(TerrafmAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Tokens>()
                                  .Arg<Tokens>()
                                  .Arg<Tokens>()
                                  .Arg<Tokens>()
                                  .Arg<Scores>()
                                  .Arg<Tokens>()
                                  .Ret<Tokens>()
                                  .Ret<Tokens>()
                                  .Ret<Tokens>()
                                  .Attr<float>("scale"));

// OpenBLAS threads off: the handlers parallelise over (sample, head) pairs with XLA's own pool.
extern "C" void terrafm_single_threaded_blas() { scipy_openblas_set_num_threads(1); }
