// Just enough CUDA for runtime/cuda/kernels.cu to compile as C++ for the CPU, in the tests.
//
// The kernels use no shared memory, barriers, atomics or warp functions: each thread computes
// its own output pixels from its indices alone, so running the threads of a launch one after
// another in a loop computes exactly what the GPU does in parallel. Kernel and device functions
// become plain functions; threadIdx, blockIdx, blockDim and gridDim are set by host_launch for
// each thread in turn. The half-float conversions are kernels.cu's own host branch (no
// __CUDA_ARCH__ here).
#pragma once

#include <cstddef>

#define __global__
#define __device__
#define __forceinline__ inline

struct dim3 {
    unsigned x, y, z;
};

// One launch at a time per thread of the caller.
static thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// Every thread of the grid x block launch, in order, each calling body() with its indices set.
template <typename Body>
void host_launch(const unsigned grid[3], const unsigned block[3], Body body)
{
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (blockIdx.z = 0; blockIdx.z < grid[2]; blockIdx.z++)
        for (blockIdx.y = 0; blockIdx.y < grid[1]; blockIdx.y++)
            for (blockIdx.x = 0; blockIdx.x < grid[0]; blockIdx.x++)
                for (threadIdx.z = 0; threadIdx.z < block[2]; threadIdx.z++)
                    for (threadIdx.y = 0; threadIdx.y < block[1]; threadIdx.y++)
                        for (threadIdx.x = 0; threadIdx.x < block[0]; threadIdx.x++)
                            body();
}
