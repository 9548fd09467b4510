// Weight rules of docs/METHOD.md for two gradient sets, shared by the CPU and CUDA kernels.
// Pure C++ (no torch headers) so nvcc can compile it standalone. Must agree with
// gh_kernels/weighting/gh.py (solve_weights_torch); tests compare every backend with it.
// Real is float (float32, bfloat16 and float16 gradients) or double (float64 gradients).
#pragma once
#include <cmath>

#include "gh_constants.h"

namespace gh {

// (w1, w2) from the Gram entries n1sq = <g1,g1>, c = <g1,g2>, n2sq = <g2,g2>.
template <typename Real>
GH_HD inline void solve_weights(Real n1sq, Real c, Real n2sq, int method, Real kappa, Real* w1, Real* w2) {
  using std::acos;
  using std::cos;
  using std::fmax;
  using std::fmin;
  using std::isfinite;
  using std::sin;
  using std::sqrt;
  const Real one = Real(1), zero = Real(0);
  *w1 = one;
  *w2 = one;
  // No conflict, a zero gradient (then c == 0) or a non-finite entry: plain sum (docs/METHOD.md R2, R9, R10).
  if (method == kSum || !isfinite(n1sq) || !isfinite(c) || !isfinite(n2sq) || !(c < zero)) return;
  const Real n1s = n1sq > zero ? n1sq : one;
  const Real n2s = n2sq > zero ? n2sq : one;
  const Real gh1 = one - c / n1s, gh2 = one - c / n2s;
  if (method == kGH) {
    *w1 = gh1;
    *w2 = gh2;
    return;
  }
  const Real n1 = sqrt(n1s), n2 = sqrt(n2s);
  const Real cs = fmin(fmax(c / (n1 * n2), -one), one);  // docs/METHOD.md R8
  const Real theta = acos(cs);
  const Real excess = theta - Real(1.57079632679489662);  // theta - 90deg
  const Real beta = kappa * excess;
  if (method == kGHPP) {
    const Real gamma = excess - beta;
    const Real s = sqrt(fmax(one - cs * cs, zero));
    if (s < Real(kGhppMinSin)) {  // docs/METHOD.md R5
      *w1 = gh1;
      *w2 = gh2;
      return;
    }
    *w1 = (cos(gamma) + (n2 / n1) * sin(gamma)) / s;
    *w2 = (cos(beta) + (n1 / n2) * sin(beta)) / s;
  } else {  // kGHPPReleased
    *w1 = one + Real(2) * sin(beta / Real(2));
    *w2 = one + Real(2) * sin((beta - excess) / Real(2));
  }
}

}  // namespace gh
