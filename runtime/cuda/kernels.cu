// CUDA kernels of runtime.cuda.ops: the semantics of runtime/ops/reference.py.
//
// The host passes the reference's own sampling tables (taps, weights, nearest indices), and
// every kernel repeats the reference's float operations in the same order. Compiled with
// --fmad=false (no fused multiply-adds) and IEEE division, float results round exactly like
// the reference's separate NumPy operations; integer results are bit-identical.
// One thread per output pixel; x = column, y = row.
//
// Half floats are raw 16-bit words converted with the PTX cvt instructions that __half2float
// and __float2half_rn compile to, so no header is needed: nvcc (pycuda) and NVRTC (CuPy) build
// this file alike, where NVRTC's cuda_fp16.h varies with the CUDA version installed.
//
// The tests also compile this file for the CPU (tests/runtime/host_cuda/cuda_host_shim.h runs
// the launch grid as loops). Only device compilation defines __CUDA_ARCH__, so there the PTX
// below is used and the device code is unchanged by the host conversions, which exist for the
// host passes alone (the tests' CPU build, and nvcc's own host pass, which must see them too).

#ifndef __CUDA_ARCH__
#include <cstring>
#include <limits>
#endif

namespace {

#ifndef __CUDA_ARCH__
// cvt.f32.f16 on the host: every half is exactly a float (NaN payloads kept).
__device__ __forceinline__ float host_half_to_float(unsigned short half)
{
    const unsigned sign = (half & 0x8000u) << 16, exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu;
    unsigned bits;
    if (exponent == 0x1f)  // inf, NaN
        bits = sign | 0x7f800000u | (mantissa << 13);
    else if (exponent != 0)  // normal: rebias 15 -> 127
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    else {  // zero or subnormal: mantissa * 2^-24, exact in float
        const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        std::memcpy(&bits, &magnitude, sizeof bits);
        bits |= sign;
    }
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

// cvt.rn.f16.f32 on the host: round to nearest, ties to even; beyond the largest half, inf.
__device__ __forceinline__ unsigned short host_float_to_half_rn(float value)
{
    unsigned bits;
    std::memcpy(&bits, &value, sizeof bits);
    const unsigned sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)  // NaN: a quiet NaN of the same sign (outside the kernels' contract)
        return (unsigned short)(sign | 0x7e00u);
    if (magnitude >= 0x47800000u)  // >= 2^16 (and inf): inf
        return (unsigned short)(sign | 0x7c00u);
    unsigned kept, dropped, halfway;
    if (magnitude >= 0x38800000u) {  // >= 2^-14: a normal half, 13 mantissa bits dropped
        kept = (magnitude - (112u << 23)) >> 13;
        dropped = magnitude & 0x1fffu;
        halfway = 0x1000u;
    } else {  // a subnormal half: units of 2^-24 from the 24-bit significand
        const unsigned exponent = magnitude >> 23;
        if (exponent < 102)  // below 2^-25: rounds to zero
            return (unsigned short)sign;
        const unsigned significand = (magnitude & 0x7fffffu) | 0x800000u, shift = 126 - exponent;  // 14..24
        kept = significand >> shift;
        dropped = significand & ((1u << shift) - 1);
        halfway = 1u << (shift - 1);
    }
    kept += dropped > halfway || (dropped == halfway && (kept & 1u));  // a carry moves to the next exponent
    return (unsigned short)(sign | kept);
}
#endif

struct half_word {
    unsigned short bits;
};

__device__ __forceinline__ float load_logit(const float *p) { return *p; }
__device__ __forceinline__ float load_logit(const half_word *p)
{
#ifdef __CUDA_ARCH__
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(p->bits));
    return value;
#else
    return host_half_to_float(p->bits);
#endif
}

__device__ __forceinline__ void store_input(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_input(half_word *p, float v)
{
#ifdef __CUDA_ARCH__
    unsigned short bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(v));  // round to nearest even
    p->bits = bits;
#else
    p->bits = host_float_to_half_rn(v);
#endif
}

// reference.preprocess, layout "nchw_float": vertical lerp, horizontal lerp, then
// (v / 255 - mean) / std into RGB planes. The frame fills the region (top, left, rh, rw) of the
// h x w input, whose taps the tables hold; the rest is 0.0, the mean colour normalised.
template <typename Out>
__device__ void preprocess_nchw(const unsigned char *frame, int src_w, int h, int w, int region_top,
                                int region_left, int region_h, int region_w, const int *y0, const int *y1,
                                const float *fy, const int *x0, const int *x1, const float *fx, float mean_r,
                                float mean_g, float mean_b, float std_r, float std_g, float std_b, Out *out)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x, dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= w || dy >= h)
        return;
    const size_t plane = (size_t)h * w, at = (size_t)dy * w + dx;
    const int ry = dy - region_top, rx = dx - region_left;
    if (ry < 0 || ry >= region_h || rx < 0 || rx >= region_w) {
        for (int c = 0; c < 3; c++)
            store_input(out + c * plane + at, 0.0f);
        return;
    }
    const unsigned char *top = frame + (size_t)y0[ry] * src_w * 3;
    const unsigned char *bottom = frame + (size_t)y1[ry] * src_w * 3;
    const float wy = fy[ry], wy0 = 1.0f - wy, wx = fx[rx], wx0 = 1.0f - wx;
    const int left = 3 * x0[rx], right = 3 * x1[rx];
    const float mean[3] = {mean_r, mean_g, mean_b}, stdev[3] = {std_r, std_g, std_b};
    for (int c = 0; c < 3; c++) {  // RGB plane c reads BGR channel 2 - c
        const int ch = 2 - c;
        const float row_left = wy0 * (float)top[left + ch] + wy * (float)bottom[left + ch];
        const float row_right = wy0 * (float)top[right + ch] + wy * (float)bottom[right + ch];
        const float v = wx0 * row_left + wx * row_right;
        store_input(out + c * plane + at, (v / 255.0f - mean[c]) / stdev[c]);
    }
}

// reference.saturate_logits: clipped to +-2^126 (reference.LOGIT_LIMIT), NaN (every comparison
// false) to -2^126, so the lerps below stay finite.
__device__ __forceinline__ float saturate(float v)
{
    const float limit = 0x1p126f, high = v > limit ? limit : v;
    return high >= -limit ? high : -limit;
}

// reference.upsample_argmax: saturated logits, horizontal lerp of both source rows, vertical
// lerp, strict running maximum (the lowest class wins a tie).
template <typename T>
__device__ void upsample_argmax_impl(const T *logits, int classes, int h, int w, int out_h, int out_w,
                                     const int *y0, const int *y1, const float *fy, const int *x0,
                                     const int *x1, const float *fx, unsigned char *labels)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x, dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= out_w || dy >= out_h)
        return;
    const size_t plane = (size_t)h * w;
    const T *top_row = logits + (size_t)y0[dy] * w, *bottom_row = logits + (size_t)y1[dy] * w;
    const int left = x0[dx], right = x1[dx];
    const float tx = fx[dx], ty = fy[dy];
    float best = 0.0f;
    int best_class = 0;
    for (int k = 0; k < classes; k++) {
        const T *t = top_row + k * plane, *b = bottom_row + k * plane;
        const float tl = saturate(load_logit(t + left)), tr = saturate(load_logit(t + right));
        const float bl = saturate(load_logit(b + left)), br = saturate(load_logit(b + right));
        const float top = tl + tx * (tr - tl), bottom = bl + tx * (br - bl);
        const float v = top + ty * (bottom - top);
        if (k == 0 || v > best) {
            best = v;
            best_class = k;
        }
    }
    labels[(size_t)dy * out_w + dx] = (unsigned char)best_class;
}

__device__ __forceinline__ float minus_infinity()
{
#ifdef __CUDA_ARCH__
    return __int_as_float(0xff800000);
#else
    return -std::numeric_limits<float>::infinity();
#endif
}

// reference.argmax over (K, pixels) logits: NaN counts as -inf (a NaN never compares greater,
// so only class 0's is replaced), strict running maximum.
template <typename T>
__device__ void argmax_impl(const T *logits, int classes, int pixels, unsigned char *labels)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels)
        return;
    const float first = load_logit(logits + i);
    float best = first == first ? first : minus_infinity();
    int best_class = 0;
    for (int k = 1; k < classes; k++) {
        const float v = load_logit(logits + (size_t)k * pixels + i);
        if (v > best) {
            best = v;
            best_class = k;
        }
    }
    labels[i] = (unsigned char)best_class;
}

// reference.has_nonfinite of the logits a frame uses, the rectangle (top, left, region_h,
// region_w) of the h x w planes: a thread per pixel of it; one that meets an inf or NaN stores 1
// in *flag, which the host zeroed (every such store is the same 1, so their order is moot).
// v - v is 0 for a finite v and NaN for inf or NaN.
template <typename T>
__device__ void find_nonfinite_impl(const T *logits, int classes, int h, int w, int top, int left, int region_h,
                                    int region_w, unsigned char *flag)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x, dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= region_w || dy >= region_h)
        return;
    const size_t plane = (size_t)h * w, at = (size_t)(top + dy) * w + left + dx;
    for (int k = 0; k < classes; k++) {
        const float v = load_logit(logits + k * plane + at);
        if (v - v != 0.0f) {
            *flag = 1;
            return;
        }
    }
}

}  // namespace

extern "C" {

__global__ void preprocess_nchw_f32(const unsigned char *frame, int src_w, int h, int w, int region_top,
                                    int region_left, int region_h, int region_w, const int *y0, const int *y1,
                                    const float *fy, const int *x0, const int *x1, const float *fx, float mean_r,
                                    float mean_g, float mean_b, float std_r, float std_g, float std_b, float *out)
{
    preprocess_nchw<float>(frame, src_w, h, w, region_top, region_left, region_h, region_w, y0, y1, fy, x0, x1, fx,
                           mean_r, mean_g, mean_b, std_r, std_g, std_b, out);
}

__global__ void preprocess_nchw_f16(const unsigned char *frame, int src_w, int h, int w, int region_top,
                                    int region_left, int region_h, int region_w, const int *y0, const int *y1,
                                    const float *fy, const int *x0, const int *x1, const float *fx, float mean_r,
                                    float mean_g, float mean_b, float std_r, float std_g, float std_b,
                                    half_word *out)
{
    preprocess_nchw<half_word>(frame, src_w, h, w, region_top, region_left, region_h, region_w, y0, y1, fy, x0, x1,
                               fx, mean_r, mean_g, mean_b, std_r, std_g, std_b, out);
}

// reference.preprocess, layout "nhwc_uint8": exact integers with weights in 1/2048,
// (sum + 2^21) >> 22, RGB bytes; outside the region, the padding bytes pad_r, pad_g, pad_b.
__global__ void preprocess_nhwc_u8(const unsigned char *frame, int src_w, int h, int w, int region_top,
                                   int region_left, int region_h, int region_w, const int *y0, const int *y1,
                                   const int *qy, const int *x0, const int *x1, const int *qx, int pad_r, int pad_g,
                                   int pad_b, unsigned char *out)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x, dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= w || dy >= h)
        return;
    unsigned char *dst = out + ((size_t)dy * w + dx) * 3;
    const int ry = dy - region_top, rx = dx - region_left;
    if (ry < 0 || ry >= region_h || rx < 0 || rx >= region_w) {
        dst[0] = (unsigned char)pad_r;
        dst[1] = (unsigned char)pad_g;
        dst[2] = (unsigned char)pad_b;
        return;
    }
    const unsigned char *top = frame + (size_t)y0[ry] * src_w * 3;
    const unsigned char *bottom = frame + (size_t)y1[ry] * src_w * 3;
    const int wy = qy[ry], wy0 = 2048 - wy, wx = qx[rx], wx0 = 2048 - wx;
    const int left = 3 * x0[rx], right = 3 * x1[rx];
    for (int c = 0; c < 3; c++) {
        const int ch = 2 - c;
        const int row_left = wy0 * top[left + ch] + wy * bottom[left + ch];
        const int row_right = wy0 * top[right + ch] + wy * bottom[right + ch];
        const int total = wx0 * row_left + wx * row_right;  // <= 255 * 2^22
        dst[c] = (unsigned char)((total + (1 << 21)) >> 22);
    }
}

__global__ void upsample_argmax_f32(const float *logits, int classes, int h, int w, int out_h, int out_w,
                                    const int *y0, const int *y1, const float *fy, const int *x0, const int *x1,
                                    const float *fx, unsigned char *labels)
{
    upsample_argmax_impl<float>(logits, classes, h, w, out_h, out_w, y0, y1, fy, x0, x1, fx, labels);
}

__global__ void upsample_argmax_f16(const half_word *logits, int classes, int h, int w, int out_h, int out_w,
                                    const int *y0, const int *y1, const float *fy, const int *x0, const int *x1,
                                    const float *fx, unsigned char *labels)
{
    upsample_argmax_impl<half_word>(logits, classes, h, w, out_h, out_w, y0, y1, fy, x0, x1, fx, labels);
}

__global__ void find_nonfinite_f32(const float *logits, int classes, int h, int w, int top, int left, int region_h,
                                   int region_w, unsigned char *flag)
{
    find_nonfinite_impl<float>(logits, classes, h, w, top, left, region_h, region_w, flag);
}

__global__ void find_nonfinite_f16(const half_word *logits, int classes, int h, int w, int top, int left,
                                   int region_h, int region_w, unsigned char *flag)
{
    find_nonfinite_impl<half_word>(logits, classes, h, w, top, left, region_h, region_w, flag);
}

__global__ void argmax_f32(const float *logits, int classes, int pixels, unsigned char *labels)
{
    argmax_impl<float>(logits, classes, pixels, labels);
}

__global__ void argmax_f16(const half_word *logits, int classes, int pixels, unsigned char *labels)
{
    argmax_impl<half_word>(logits, classes, pixels, labels);
}

// reference.blend: nearest label, ((256 - a) * frame + a * colour + 128) >> 8 with the RGB
// palette applied as BGR; labels >= classes keep the frame pixel. out may be frame.
__global__ void blend(const unsigned char *frame, int height, int width, const unsigned char *labels,
                      int label_w, const int *label_rows, const int *label_cols, const unsigned char *palette_rgb,
                      int classes, int weight, unsigned char *out)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height)
        return;
    const int label = labels[(size_t)label_rows[y] * label_w + label_cols[x]];
    const size_t at = ((size_t)y * width + x) * 3;
    for (int c = 0; c < 3; c++) {
        const int pixel = frame[at + c];
        out[at + c] = label < classes
                          ? (unsigned char)(((256 - weight) * pixel + weight * palette_rgb[label * 3 + 2 - c] + 128) >> 8)
                          : (unsigned char)pixel;
    }
}

}  // extern "C"
