// Stand-in for the CUDA toolkit header under the CPU emulation (NOTE: [Emulated execution model]).
#pragma once
#include "cuda_emu.h"
