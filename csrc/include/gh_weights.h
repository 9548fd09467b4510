// Weight rules of docs/METHOD.md for two gradient sets, shared by the CPU and CUDA kernels.
// Pure C++ (no torch headers) so nvcc can compile it standalone. Must agree with
// gh_kernels/methods.py (solve_weights_torch); tests compare every backend with it.
#pragma once
#include <math.h>

#include "gh_constants.h"

namespace gh {

GH_HD inline bool gh_isfinite(float x) { return isfinite(x); }

// (w1, w2) from the Gram entries n1sq = <g1,g1>, c = <g1,g2>, n2sq = <g2,g2>.
GH_HD inline void solve_weights(float n1sq, float c, float n2sq, int method, float kappa, float* w1, float* w2) {
  *w1 = 1.0f;
  *w2 = 1.0f;
  // No conflict, a zero gradient (then c == 0) or a non-finite entry: plain sum (docs/METHOD.md R2, R9, R10).
  if (method == kSum || !gh_isfinite(n1sq) || !gh_isfinite(c) || !gh_isfinite(n2sq) || !(c < 0.0f)) return;
  const float n1s = n1sq > 0.0f ? n1sq : 1.0f;
  const float n2s = n2sq > 0.0f ? n2sq : 1.0f;
  const float gh1 = 1.0f - c / n1s, gh2 = 1.0f - c / n2s;
  if (method == kGH) {
    *w1 = gh1;
    *w2 = gh2;
    return;
  }
  const float n1 = sqrtf(n1s), n2 = sqrtf(n2s);
  const float cs = fminf(fmaxf(c / (n1 * n2), -1.0f), 1.0f);
  const float theta = acosf(cs);
  const float excess = theta - 1.57079632679489662f;  // theta - 90deg
  const float beta = kappa * excess;
  if (method == kGHPP) {
    const float gamma = excess - beta;
    const float s = sqrtf(fmaxf(1.0f - cs * cs, 0.0f));
    if (s < kGhppMinSin) {  // docs/METHOD.md R5
      *w1 = gh1;
      *w2 = gh2;
      return;
    }
    *w1 = (cosf(gamma) + (n2 / n1) * sinf(gamma)) / s;
    *w2 = (cosf(beta) + (n1 / n2) * sinf(beta)) / s;
  } else {  // kGHPPReleased
    *w1 = 1.0f + 2.0f * sinf(beta / 2.0f);
    *w2 = 1.0f + 2.0f * sinf((beta - excess) / 2.0f);
  }
}

}  // namespace gh
