// The CUDA kernels of runtime/cuda/kernels.cu as a CPU shared library, for the tests only.
//
// host_launcher(name) gives a function launch(grid[3], block[3], kernel arguments...) that runs
// the kernel over the whole grid (cuda_host_shim.h); ctypes calls it with the argument types of
// runtime.cuda.ops.SIGNATURES. The kernel source is included as it is: KERNELS_CU names it.
#include <cstring>

#include "cuda_host_shim.h"
#include KERNELS_CU

namespace {

template <typename... Args>
struct Launcher {
    template <void (*Kernel)(Args...)>
    static void launch(const unsigned *grid, const unsigned *block, Args... args)
    {
        host_launch(grid, block, [&] { Kernel(args...); });
    }
};

template <typename... Args>
Launcher<Args...> launcher_of(void (*)(Args...));

#define HOST_KERNEL(name) {#name, (void *)&decltype(launcher_of(name))::template launch<name>}

struct Entry {
    const char *name;
    void *launch;
};

const Entry kernels[] = {
    HOST_KERNEL(preprocess_nchw_f32), HOST_KERNEL(preprocess_nchw_f16), HOST_KERNEL(preprocess_nhwc_u8),
    HOST_KERNEL(upsample_argmax_f32), HOST_KERNEL(upsample_argmax_f16), HOST_KERNEL(argmax_f32),
    HOST_KERNEL(argmax_f16),          HOST_KERNEL(blend),               HOST_KERNEL(find_nonfinite_f32),
    HOST_KERNEL(find_nonfinite_f16),
};

}  // namespace

extern "C" {

// The launcher of kernel `name`, or null for a name kernels.cu does not define here.
void *host_launcher(const char *name)
{
    for (const Entry &entry : kernels)
        if (std::strcmp(entry.name, name) == 0)
            return entry.launch;
    return nullptr;
}

// The kernels' half conversions, exported so the tests can check them on every half and on
// float32 rounding boundaries directly.
float host_half_bits_to_float(unsigned short bits) { return host_half_to_float(bits); }
unsigned short host_float_to_half_bits(float value) { return host_float_to_half_rn(value); }

}  // extern "C"
