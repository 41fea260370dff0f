// What the build recorded (CMake passes these as definitions); each defaults to "unknown" / empty when missing.
#pragma once

#ifndef VASA_CXX_COMPILER
#define VASA_CXX_COMPILER "unknown"
#endif
#ifndef VASA_CUDA_BUILT
#define VASA_CUDA_BUILT 0
#endif
#ifndef VASA_CUDA_COMPILER
#define VASA_CUDA_COMPILER ""
#endif
#ifndef VASA_CUDA_ARCHS
#define VASA_CUDA_ARCHS ""
#endif
