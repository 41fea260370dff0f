// VASA_HD marks the arithmetic that the CPU extension and the CUDA kernels share: __host__ __device__ inline under
// nvcc, plain inline under a C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define VASA_HD __host__ __device__ __forceinline__
#else
#define VASA_HD inline
#endif
