// Constants shared by the C++, CUDA, Python and Triton code. Python's copy is
// gh_kernels/ops/constants.py; tests/test_constants.py compiles a program against this header and
// compares every value, so the two cannot drift apart. Plain C++ (no torch headers): nvcc
// compiles it standalone.
#pragma once

#if defined(__CUDACC__)
#define GH_HD __host__ __device__
#else
#define GH_HD
#endif

namespace gh {

// The fused kernels handle up to this many gradient sets (_constants.MAX_SETS).
constexpr int kMaxSets = 8;
// Partial-sum columns of the Gram pass: one per pair (a, b), a <= b (_constants.NUM_PAIRS).
constexpr int kNumPairs = kMaxSets * (kMaxSets + 1) / 2;

// Column of pair (a, b), a <= b: row-major upper triangle (_constants.pair_column).
GH_HD constexpr int pair_column(int a, int b) { return a * kMaxSets - a * (a - 1) / 2 + (b - a); }

// The CUDA kernels' wide path (NOTE: [Wide work list], gh_worklist.h) takes up to this many sets
// (_constants.MAX_WIDE_SETS); the C++ CPU kernels take any number.
constexpr int kMaxWideSets = 64;
// Elements of each set staged per shared-memory tile by the wide Gram kernel (NOTE: [Wide Gram block]).
constexpr int kWideGramTile = 64;

// Columns of a wide Gram row for K sets, and the column of pair (a, b), a <= b: row-major upper triangle.
GH_HD constexpr int wide_pairs(int K) { return K * (K + 1) / 2; }
GH_HD constexpr int wide_pair_column(int a, int b, int K) { return a * K - a * (a - 1) / 2 + (b - a); }

// Method codes: the index of the name in _constants.METHODS.
enum Method : int { kSum = 0, kGH = 1, kGHPP = 2, kGHPPReleased = 3 };
constexpr int kNumMethods = 4;
constexpr const char* kMethodNames[kNumMethods] = {"sum", "gh", "gh++", "gh++released"};

// Rule codes of the per-coordinate op: the index of the name in _constants.COORDINATE_RULES.
enum CoordinateRule : int { kCoordinateTrimmedMean = 0, kCoordinateGradDrop = 1 };
constexpr int kNumCoordinateRules = 2;
constexpr const char* kCoordinateRuleNames[kNumCoordinateRules] = {"trimmed-mean", "graddrop"};

// Below this sin(theta), GH++ uses the GH weights (_constants.GHPP_MIN_SIN).
constexpr float kGhppMinSin = 0.02f;

}  // namespace gh
