// The CUDA kernels of selective_scan.cu compiled for the CPU emulation in scan_emulate.h
// (built with -DMSVMAMBA_SCAN_EMULATE together with selective_scan.cpp; tests only).
#ifndef MSVMAMBA_SCAN_EMULATE
#error "build with -DMSVMAMBA_SCAN_EMULATE"
#endif
#include "selective_scan.cu"
