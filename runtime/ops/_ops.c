/*
 * C implementation of runtime.ops (OpenMP over rows, GIL released while computing).
 *
 * runtime/ops/reference.py defines what every function computes, including the rounding
 * rules; the code below follows the same formulas in the same float operation order, except
 * that preprocess folds / 255, - mean and / std into one multiply-add (within 1e-6). Build
 * with -ffp-contract=off so the compiler does not fuse them into FMAs and change results.
 * Arguments arrive already normalised by the wrappers in runtime/ops/__init__.py; arrays are
 * validated here because this code reads their memory directly.
 *
 * The ops share the cores with inference, so a worker may be descheduled mid-call: loops hand
 * out small chunks dynamically (the running threads take over the waiting work) instead of a
 * fixed share per thread, and runtime/ops/__init__.py makes idle workers sleep, not spin.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WEIGHT_ONE 2048   /* uint8 resize weights in 1/2048 */
#define WEIGHT_SHIFT 22   /* two weights multiplied: 2^11 * 2^11 */
#define ALPHA_ONE 256
#define MAX_CLASSES 256
#define MAX_ELEMENTS 2147483647L /* reference.MAX_ELEMENTS: no size product overflows 32 bits */
#define ARGMAX_CHUNK 2048
#define ROW_CHUNK 8       /* output rows a worker takes at a time */

/* Hot loops get an AVX2 clone picked at load time where the CPU has it; the baseline build
   stays portable. No FMA: results must not depend on the CPU. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

static PyObject *input_error; /* runtime.ops.reference.OpsInputError */
static int thread_count = 1;

/* ---------------------------------------------------------------------------------------- */
/* float16 <-> float32, IEEE binary16, round to nearest even (as numpy's astype).            */

static inline uint32_t float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static inline float bits_float(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Branch-free (so loops over it vectorise): every case is computed, then one is selected. */
static inline uint16_t float_to_half(float value)
{
    const uint32_t bits = float_bits(value);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const uint32_t magnitude = bits & 0x7fffffffu;
    /* Normal halves: rebias the exponent 127 -> 15 and round the 13 dropped bits half to even;
       a carry into the exponent is the correct rounding. */
    const uint32_t normal = (magnitude - 0x38000000u + 0x0fffu + ((magnitude >> 13) & 1u)) >> 13;
    /* Below 2^-14: adding 0.5 (ulp 2^-24) makes the FPU round to a multiple of 2^-24, the
       subnormal step, to nearest even; the low bits are then the half's mantissa. */
    const uint32_t subnormal = float_bits(bits_float(magnitude) + 0.5f) - 0x3f000000u;
    const uint32_t special = magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u; /* NaN, or inf */
    uint32_t half = magnitude < 0x38800000u ? subnormal : normal;
    half = magnitude >= 0x477ff000u ? special : half; /* >= 65520 rounds past the largest half */
    return (uint16_t)(sign | half);
}

VECTOR_CLONES static void floats_to_halves(const float *restrict src, uint16_t *restrict dst, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        dst[i] = float_to_half(src[i]);
}

static inline float half_to_float(uint16_t half)
{
    const uint32_t sign = (uint32_t)(half & 0x8000u) << 16;
    const uint32_t exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu;
    if (exponent == 0) /* zero or subnormal: mantissa * 2^-24, exact */
        return bits_float(sign | float_bits((float)mantissa * 5.9604644775390625e-8f));
    if (exponent == 31) /* inf or NaN */
        return bits_float(sign | 0x7f800000u | (mantissa << 13));
    return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13)); /* rebias 15 -> 127 */
}

/* Orders float16 bit patterns like their values (+0 and -0 equal), NaN as -inf (reference.argmax). */
static inline int16_t half_order_key(uint16_t half)
{
    const int16_t magnitude = (int16_t)(half & 0x7fffu);
    const int16_t key = (half & 0x8000u) ? (int16_t)-magnitude : magnitude;
    return magnitude > 0x7c00 ? (int16_t)-0x7c00 : key;
}

/* 1 for a float16 inf or NaN (all exponent bits set). */
static inline int half_nonfinite(uint16_t half)
{
    return (half & 0x7c00u) == 0x7c00u;
}

/* 1 for a float inf or NaN; the comparison is false for NaN. */
static inline int float_nonfinite(float value)
{
    return !(fabsf(value) <= FLT_MAX);
}

/* ---------------------------------------------------------------------------------------- */
/* Sampling taps: reference._taps, computed exactly in integers.                            */

typedef struct {
    int32_t *i0, *i1, *frac_q;
    float *frac;
} Taps;

static void taps_free(Taps *taps)
{
    free(taps->i0);
    free(taps->i1);
    free(taps->frac_q);
    free(taps->frac);
}

static int taps_alloc(Taps *taps, int64_t count)
{
    taps->i0 = malloc(count * sizeof(int32_t));
    taps->i1 = malloc(count * sizeof(int32_t));
    taps->frac_q = malloc(count * sizeof(int32_t));
    taps->frac = malloc(count * sizeof(float));
    if (taps->i0 && taps->i1 && taps->frac_q && taps->frac)
        return 0;
    taps_free(taps);
    return -1;
}

/* Output index d samples num / den of an axis of in_size pixels, clamped at the edges. */
static void set_tap(Taps *taps, int64_t d, int64_t num, int64_t den, int64_t in_size)
{
    int64_t i0 = 0, rem = 0;
    int clamped = 1;
    if (num >= 0) {
        i0 = num / den;
        rem = num % den;
        if (i0 >= in_size - 1) {
            i0 = in_size - 1;
            rem = 0;
        } else {
            clamped = 0;
        }
    }
    taps->i0[d] = (int32_t)i0;
    taps->i1[d] = (int32_t)(clamped ? i0 : i0 + 1);
    taps->frac[d] = (float)((double)rem / (double)den);
    taps->frac_q[d] = (int32_t)((2 * rem * WEIGHT_ONE + den) / (2 * den));
}

static int half_pixel_taps(Taps *taps, int64_t in_size, int64_t out_size)
{
    if (taps_alloc(taps, out_size))
        return -1;
    for (int64_t d = 0; d < out_size; d++)
        set_tap(taps, d, (2 * d + 1) * in_size - out_size, 2 * out_size, in_size);
    return 0;
}

static int align_corners_taps(Taps *taps, int64_t in_size, int64_t out_size)
{
    if (taps_alloc(taps, out_size))
        return -1;
    const int64_t den = out_size > 1 ? out_size - 1 : 1;
    for (int64_t d = 0; d < out_size; d++)
        set_tap(taps, d, d * (in_size - 1), den, in_size);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Input validation.                                                                         */

static PyObject *shape_of(PyArrayObject *array)
{
    PyObject *shape = PyTuple_New(PyArray_NDIM(array));
    if (!shape)
        return NULL;
    for (int i = 0; i < PyArray_NDIM(array); i++) {
        PyObject *dim = PyLong_FromSsize_t(PyArray_DIM(array, i));
        if (!dim) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, i, dim);
    }
    return shape;
}

/* The array if it is an ndarray of dtype `typenum` (or `alt_typenum`), `ndim` dimensions,
   C-contiguous, aligned, native-endian, non-empty (and writeable when asked); else NULL with
   OpsInputError set. */
static PyArrayObject *checked_array(PyObject *obj, const char *op, const char *name, int typenum,
                                    int alt_typenum, int ndim, int writeable, const char *shape_doc)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(input_error, "%s: %s must be a numpy array of shape %s, got %s; convert it with np.asarray",
                     op, name, shape_doc, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *array = (PyArrayObject *)obj;
    if ((PyArray_TYPE(array) != typenum && PyArray_TYPE(array) != alt_typenum) || PyArray_NDIM(array) != ndim) {
        PyArray_Descr *expected = PyArray_DescrFromType(typenum);
        PyObject *shape = shape_of(array);
        if (expected && shape)
            PyErr_Format(input_error, "%s: %s must be a %R array of shape %s, got %R of shape %R", op, name,
                         (PyObject *)expected, shape_doc, (PyObject *)PyArray_DESCR(array), shape);
        Py_XDECREF(expected);
        Py_XDECREF(shape);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(array) || !PyArray_ISALIGNED(array) || !PyArray_ISNOTSWAPPED(array)) {
        PyErr_Format(input_error, "%s: %s must be C-contiguous, aligned and native-endian; pass np.ascontiguousarray(%s)",
                     op, name, name);
        return NULL;
    }
    if (writeable && !PyArray_ISWRITEABLE(array)) {
        PyErr_Format(input_error, "%s: %s must be writeable", op, name);
        return NULL;
    }
    if (PyArray_SIZE(array) == 0) {
        PyObject *shape = shape_of(array);
        if (shape)
            PyErr_Format(input_error, "%s: %s must not be empty, got shape %R", op, name, shape);
        Py_XDECREF(shape);
        return NULL;
    }
    if (PyArray_SIZE(array) > MAX_ELEMENTS) {
        PyErr_Format(input_error, "%s: %s has %zd elements; at most %ld (2^31 - 1) are allowed", op, name,
                     (Py_ssize_t)PyArray_SIZE(array), MAX_ELEMENTS);
        return NULL;
    }
    return array;
}

static int overlaps(PyArrayObject *a, PyArrayObject *b)
{
    const char *a0 = PyArray_BYTES(a), *b0 = PyArray_BYTES(b);
    return a0 < b0 + PyArray_NBYTES(b) && b0 < a0 + PyArray_NBYTES(a);
}

/* The caller's `out` buffer when it fits (new reference), a fresh array when it is None. */
static PyArrayObject *output_array(PyObject *out, const char *op, int typenum, int ndim, npy_intp *dims)
{
    if (out == Py_None)
        return (PyArrayObject *)PyArray_SimpleNew(ndim, dims, typenum);
    PyArrayObject *array = (PyArrayObject *)out;
    int fits = PyArray_Check(out) && PyArray_TYPE(array) == typenum && PyArray_NDIM(array) == ndim &&
               PyArray_IS_C_CONTIGUOUS(array) && PyArray_ISALIGNED(array) && PyArray_ISNOTSWAPPED(array) &&
               PyArray_ISWRITEABLE(array);
    for (int i = 0; fits && i < ndim; i++)
        fits = PyArray_DIM(array, i) == dims[i];
    if (fits) {
        Py_INCREF(array);
        return array;
    }
    PyArray_Descr *expected_type = PyArray_DescrFromType(typenum);
    PyObject *expected_shape = PyArray_IntTupleFromIntp(ndim, dims);
    PyObject *got_shape = PyArray_Check(out) ? shape_of(array) : NULL;
    PyObject *got = got_shape ? PyUnicode_FromFormat("%R of shape %R", (PyObject *)PyArray_DESCR(array), got_shape)
                              : PyUnicode_FromString(Py_TYPE(out)->tp_name);
    Py_XDECREF(got_shape);
    if (expected_type && expected_shape && got)
        PyErr_Format(input_error, "%s: out must be a writeable, C-contiguous %R array of shape %R, got %U", op,
                     (PyObject *)expected_type, expected_shape, got);
    Py_XDECREF(expected_type);
    Py_XDECREF(expected_shape);
    Py_XDECREF(got);
    return NULL;
}

static PyArrayObject *checked_frame(PyObject *obj, const char *op)
{
    PyArrayObject *frame = checked_array(obj, op, "frame_bgr", NPY_UINT8, NPY_UINT8, 3, 0, "(H, W, 3)");
    if (frame && PyArray_DIM(frame, 2) != 3) {
        PyErr_Format(input_error, "%s: frame_bgr must have 3 channels (BGR), got %zd", op,
                     (Py_ssize_t)PyArray_DIM(frame, 2));
        return NULL;
    }
    return frame;
}

static PyArrayObject *checked_logits(PyObject *obj, const char *op)
{
    PyArrayObject *logits = checked_array(obj, op, "logits", NPY_FLOAT32, NPY_FLOAT16, 3, 0, "(K, H, W)");
    if (logits && PyArray_DIM(logits, 0) > MAX_CLASSES) {
        PyErr_Format(input_error, "%s: logits have %zd classes; uint8 labels allow at most %d", op,
                     (Py_ssize_t)PyArray_DIM(logits, 0), MAX_CLASSES);
        return NULL;
    }
    return logits;
}

/* out_hw for an output of `channels` values per pixel: positive, at most MAX_ELEMENTS in all
   (compared by division, so no product is formed before it is known to fit). */
static int check_size(const char *op, long height, long width, long channels)
{
    if (height < 1 || width < 1) {
        PyErr_Format(input_error, "%s: out_hw must be positive, got (%ld, %ld)", op, height, width);
        return -1;
    }
    if (height > MAX_ELEMENTS / width / channels) {
        PyErr_Format(input_error, "%s: out_hw (%ld, %ld) makes an output of more than %ld (2^31 - 1) elements", op,
                     height, width, MAX_ELEMENTS);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* preprocess                                                                                */

typedef struct {
    const uint8_t *src;
    int64_t src_h, src_w;
    int64_t out_h, out_w;      /* the whole network input */
    int64_t top, left, h, w;   /* where the resized frame goes; the rest is padding */
    Taps ty, tx;               /* for the h x w resize */
    float scale[3], bias[3];   /* RGB: (v / 255 - mean) / std == v * scale + bias */
    uint8_t pad_rgb[3];        /* "nhwc_uint8" padding: the mean colour in bytes */
} Resize;

/* Returns -1 when a worker could not get its buffers. float16 output is computed into float
   rows first and converted by plane, which vectorises. Padding is 0.0 (the mean colour,
   normalised); float16 zero has the same all-zero bits. */
static int preprocess_float(const Resize *r, float *out32, uint16_t *out16)
{
    int failed = 0;
    const int64_t row_len = r->src_w * 3, plane = r->out_h * r->out_w;
    const size_t elem = out16 ? sizeof(uint16_t) : sizeof(float);
    char *const base = out16 ? (char *)out16 : (char *)out32;
#pragma omp parallel num_threads(thread_count)
    {
        float *rows = malloc(row_len * sizeof(float)); /* vertical pass, BGR interleaved */
        float *scratch = out16 ? malloc(3 * r->w * sizeof(float)) : NULL;
        const int ready = rows && (scratch || !out16);
        if (!ready) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, ROW_CHUNK)
        for (int64_t oy = 0; oy < r->out_h; oy++) {
            if (!ready)
                continue;
            const int64_t dy = oy - r->top;
            for (int c = 0; c < 3; c++) {
                char *row = base + (c * plane + oy * r->out_w) * elem;
                if (dy < 0 || dy >= r->h) {
                    memset(row, 0, r->out_w * elem);
                } else {
                    memset(row, 0, r->left * elem);
                    memset(row + (r->left + r->w) * elem, 0, (r->out_w - r->left - r->w) * elem);
                }
            }
            if (dy < 0 || dy >= r->h)
                continue;
            const uint8_t *s0 = r->src + r->ty.i0[dy] * row_len, *s1 = r->src + r->ty.i1[dy] * row_len;
            const float wy = r->ty.frac[dy], wy0 = 1.0f - wy;
            for (int64_t i = 0; i < row_len; i++)
                rows[i] = wy0 * (float)s0[i] + wy * (float)s1[i];
            float *dst[3];
            for (int c = 0; c < 3; c++)
                dst[c] = out16 ? scratch + c * r->w : out32 + c * plane + oy * r->out_w + r->left;
            for (int64_t dx = 0; dx < r->w; dx++) {
                const float *p0 = rows + 3 * (int64_t)r->tx.i0[dx], *p1 = rows + 3 * (int64_t)r->tx.i1[dx];
                const float wx = r->tx.frac[dx], wx0 = 1.0f - wx;
                for (int c = 0; c < 3; c++) /* RGB plane c reads BGR channel 2 - c */
                    dst[c][dx] = (wx0 * p0[2 - c] + wx * p1[2 - c]) * r->scale[c] + r->bias[c];
            }
            if (out16)
                for (int c = 0; c < 3; c++)
                    floats_to_halves(dst[c], out16 + c * plane + oy * r->out_w + r->left, r->w);
        }
        free(rows);
        free(scratch);
    }
    return failed ? -1 : 0;
}

static void fill_pixels(uint8_t *dst, int64_t count, const uint8_t rgb[3])
{
    for (int64_t i = 0; i < count; i++)
        memcpy(dst + 3 * i, rgb, 3);
}

static int preprocess_bytes(const Resize *r, uint8_t *out)
{
    int failed = 0;
    const int64_t row_len = r->src_w * 3;
#pragma omp parallel num_threads(thread_count)
    {
        int32_t *rows = malloc(row_len * sizeof(int32_t)); /* vertical pass in 1/2048 units */
        if (!rows) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, ROW_CHUNK)
        for (int64_t oy = 0; oy < r->out_h; oy++) {
            if (!rows)
                continue;
            const int64_t dy = oy - r->top;
            uint8_t *row = out + oy * r->out_w * 3;
            if (dy < 0 || dy >= r->h) {
                fill_pixels(row, r->out_w, r->pad_rgb);
                continue;
            }
            fill_pixels(row, r->left, r->pad_rgb);
            fill_pixels(row + (r->left + r->w) * 3, r->out_w - r->left - r->w, r->pad_rgb);
            const uint8_t *s0 = r->src + r->ty.i0[dy] * row_len, *s1 = r->src + r->ty.i1[dy] * row_len;
            const int32_t wy = r->ty.frac_q[dy], wy0 = WEIGHT_ONE - wy;
            for (int64_t i = 0; i < row_len; i++)
                rows[i] = wy0 * (int32_t)s0[i] + wy * (int32_t)s1[i];
            uint8_t *dst = row + r->left * 3;
            for (int64_t dx = 0; dx < r->w; dx++) {
                const int32_t *p0 = rows + 3 * (int64_t)r->tx.i0[dx], *p1 = rows + 3 * (int64_t)r->tx.i1[dx];
                const int32_t wx = r->tx.frac_q[dx], wx0 = WEIGHT_ONE - wx;
                for (int c = 0; c < 3; c++) {
                    const int32_t total = wx0 * p0[2 - c] + wx * p1[2 - c]; /* <= 255 * 2^22 */
                    dst[3 * dx + c] = (uint8_t)((total + (1 << (WEIGHT_SHIFT - 1))) >> WEIGHT_SHIFT);
                }
            }
        }
        free(rows);
    }
    return failed ? -1 : 0;
}

static PyObject *py_preprocess(PyObject *self, PyObject *args)
{
    const char *op = "preprocess";
    PyObject *frame_obj, *out_obj;
    long height, width, top, left, inner_h, inner_w;
    double mean[3], std[3];
    int as_bytes, as_half;
    if (!PyArg_ParseTuple(args, "Oll(ddd)(ddd)ppO(llll)", &frame_obj, &height, &width, &mean[0], &mean[1],
                          &mean[2], &std[0], &std[1], &std[2], &as_bytes, &as_half, &out_obj, &top, &left,
                          &inner_h, &inner_w))
        return NULL;
    PyArrayObject *frame = checked_frame(frame_obj, op);
    if (!frame || check_size(op, height, width, 3))
        return NULL;
    /* top > height - inner_h rather than top + inner_h > height: the sum of two Python ints could overflow */
    if (top < 0 || left < 0 || inner_h < 1 || inner_w < 1 || top > height - inner_h || left > width - inner_w) {
        PyErr_Format(input_error, "%s: region (%ld, %ld, %ld, %ld) must lie inside out_hw (%ld, %ld)", op, top,
                     left, inner_h, inner_w, height, width);
        return NULL;
    }
    for (int c = 0; c < 3; c++) {
        if (!(std[c] > 0.0)) {
            PyErr_Format(input_error, "%s: std must be positive", op);
            return NULL;
        }
    }
    npy_intp planar[3] = {3, height, width}, interleaved[3] = {height, width, 3};
    PyArrayObject *out = as_bytes ? output_array(out_obj, op, NPY_UINT8, 3, interleaved)
                                  : output_array(out_obj, op, as_half ? NPY_FLOAT16 : NPY_FLOAT32, 3, planar);
    if (!out)
        return NULL;
    if (overlaps(out, frame)) {
        Py_DECREF(out);
        PyErr_Format(input_error, "%s: out must not share memory with frame_bgr", op);
        return NULL;
    }
    Resize r = {.src = PyArray_DATA(frame), .src_h = PyArray_DIM(frame, 0), .src_w = PyArray_DIM(frame, 1),
                .out_h = height, .out_w = width, .top = top, .left = left, .h = inner_h, .w = inner_w};
    for (int c = 0; c < 3; c++) {
        r.scale[c] = (float)(1.0 / (255.0 * std[c]));
        r.bias[c] = (float)(-mean[c] / std[c]);
        const double level = floor(mean[c] * 255.0 + 0.5);
        r.pad_rgb[c] = (uint8_t)(level < 0.0 ? 0.0 : level > 255.0 ? 255.0 : level);
    }
    if (half_pixel_taps(&r.ty, r.src_h, inner_h)) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    if (half_pixel_taps(&r.tx, r.src_w, inner_w)) {
        taps_free(&r.ty);
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    if (as_bytes)
        status = preprocess_bytes(&r, PyArray_DATA(out));
    else if (as_half)
        status = preprocess_float(&r, NULL, PyArray_DATA(out));
    else
        status = preprocess_float(&r, PyArray_DATA(out), NULL);
    Py_END_ALLOW_THREADS
    taps_free(&r.ty);
    taps_free(&r.tx);
    if (status) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return (PyObject *)out;
}

/* ---------------------------------------------------------------------------------------- */
/* upsample_argmax                                                                           */

/* Every output pixel lies in a cell of four low-resolution neighbours (the taps' i0 and i1 in
   both axes), and its value per class is a convex combination of that class's values at the
   four corners. So a class that beats another at all four corners by more than the rounding
   error of the float interpolation beats it at every pixel of the cell:
   - a cell whose four corners have the same winner by that margin is filled with it;
   - in any other cell only the classes that no corner's winner beats that way are
     interpolated, with the reference's float operations in its order, so the labels, ties
     included, are the reference's.
   Each interpolated value is within 11 float32 ulps (2^-24) of the largest |logit| M (two
   lerps of 5 ulps each); MARGIN = 64 ulps of M is more than the 22 that two values need.
   Subnormal results round by an absolute amount, which MARGIN_FLOOR covers; beyond
   MARGIN_LIMIT the differences could overflow, and every class is interpolated. */
#define MARGIN 0x1p-18f
#define MARGIN_FLOOR 0x1p-100f
#define MARGIN_LIMIT 0x1p125f
#define LOGIT_LIMIT 0x1p126f /* reference.LOGIT_LIMIT */

/* reference.saturate_logits: clipped to +-LOGIT_LIMIT, NaN (every comparison false) to -LOGIT_LIMIT. */
static inline float saturate(float value)
{
    const float high = value > LOGIT_LIMIT ? LOGIT_LIMIT : value;
    return high >= -LOGIT_LIMIT ? high : -LOGIT_LIMIT;
}

typedef struct {
    const void *src; /* float32 or float16 bits */
    int is_half;
    int64_t classes, h, w, out_h, out_w;
    Taps ty, tx;
    int64_t runs, groups;  /* maximal runs of output columns / rows with the same (i0, i1) */
    int32_t *run_start;    /* runs + 1 entries; the last is out_w */
    int32_t *group_start;  /* groups + 1 entries; the last is out_h */
    uint8_t *winner;       /* per low-resolution pixel: the argmax, lowest class on a tie */
    float *gap;            /* the winner's logit minus the runner-up's (0 on a tie) */
    float margin;          /* what a class must win by at every corner (from the largest |logit|) */
} Upsample;

/* A stretch of adjacent interpolated cells in one row group, and the classes that may win
   in any of them; interpolating them together keeps the loops long enough to vectorise. */
typedef struct {
    int64_t first_run, end_run; /* column runs first_run .. end_run - 1 */
    int64_t count;              /* classes */
    int64_t offset;             /* where their passes start in UpsampleWork.top / diff */
} Span;

/* Per worker: what one row group needs. */
typedef struct {
    int32_t *fill;        /* per column run: the class filling its cell, or -1 (interpolated) */
    Span *spans;
    int64_t *stretch_run;       /* the first column run of each stretch of a row, then runs */
    const Span **stretch_span;  /* its span, or NULL for a stretch filled with one class */
    uint8_t *classes;     /* per span, `classes` entries: the span's classes in increasing order */
    uint8_t *in_span;     /* per class: whether the open span has it */
    uint8_t *cands;       /* the candidates of one cell */
    float *top, *diff;    /* per span, class and column: the upper horizontal pass, lower - upper */
    float *best, *second, *row, *magnitude;
    int32_t *best_class;
} UpsampleWork;

static int32_t *tap_runs(const Taps *taps, int64_t size, int64_t *runs)
{
    int32_t *start = malloc((size + 1) * sizeof(int32_t));
    if (!start)
        return NULL;
    int64_t count = 0;
    for (int64_t d = 0; d < size; d++)
        if (d == 0 || taps->i0[d] != taps->i0[d - 1] || taps->i1[d] != taps->i1[d - 1])
            start[count++] = (int32_t)d;
    start[count] = (int32_t)size;
    *runs = count;
    return start;
}

/* The saturated logit at flat index i: every value this op interpolates or compares. */
static inline float logit_value(const Upsample *u, int64_t i)
{
    return saturate(u->is_half ? half_to_float(((const uint16_t *)u->src)[i]) : ((const float *)u->src)[i]);
}

static inline float logit_at(const Upsample *u, int64_t k, int64_t y, int64_t x)
{
    return logit_value(u, (k * u->h + y) * u->w + x);
}

/* Row y of class k saturated into `scratch`; returns whether it held an inf or NaN. */
VECTOR_CLONES static int logit_row(const Upsample *u, int64_t k, int64_t y, float *restrict scratch)
{
    const int64_t start = (k * u->h + y) * u->w;
    int nonfinite = 0;
    if (u->is_half) {
        const uint16_t *restrict src = (const uint16_t *)u->src + start;
        for (int64_t x = 0; x < u->w; x++) {
            nonfinite |= half_nonfinite(src[x]);
            scratch[x] = saturate(half_to_float(src[x]));
        }
    } else {
        const float *restrict src = (const float *)u->src + start;
        for (int64_t x = 0; x < u->w; x++) {
            nonfinite |= float_nonfinite(src[x]);
            scratch[x] = saturate(src[x]);
        }
    }
    return nonfinite;
}

/* Folds class k's values into the running best, runner-up (max(second, min(best, v)) is the
   runner-up whichever wins; a tie makes it equal to the best), winner and largest |value|. */
VECTOR_CLONES static void stats_update(const float *restrict values, int64_t width, int32_t klass,
                                       float *restrict best, float *restrict second, int32_t *restrict winner,
                                       float *restrict magnitude)
{
    for (int64_t x = 0; x < width; x++) {
        const float v = values[x], b = best[x], low = v < b ? v : b, size = fabsf(v);
        const int32_t wins = -(int32_t)(v > b);
        second[x] = low > second[x] ? low : second[x];
        best[x] = v > b ? v : b;
        winner[x] = (winner[x] & ~wins) | (klass & wins);
        magnitude[x] = size > magnitude[x] ? size : magnitude[x];
    }
}

/* winner and gap of every pixel of low-resolution row y; returns its largest |logit| and sets
   *nonfinite where the row held an inf or NaN. */
static float row_stats(const Upsample *u, UpsampleWork *work, int64_t y, int *nonfinite)
{
    float *best = work->best, *second = work->second, *magnitude = work->magnitude;
    int32_t *winner = work->best_class;
    const float *first = work->row;
    *nonfinite |= logit_row(u, 0, y, work->row);
    for (int64_t x = 0; x < u->w; x++) {
        best[x] = first[x];
        second[x] = -INFINITY;
        winner[x] = 0;
        magnitude[x] = fabsf(first[x]);
    }
    for (int64_t k = 1; k < u->classes; k++) {
        *nonfinite |= logit_row(u, k, y, work->row);
        stats_update(work->row, u->w, (int32_t)k, best, second, winner, magnitude);
    }
    float largest = 0.0f;
    for (int64_t x = 0; x < u->w; x++) {
        u->winner[y * u->w + x] = (uint8_t)winner[x];
        u->gap[y * u->w + x] = best[x] - second[x];
        largest = magnitude[x] > largest ? magnitude[x] : largest;
    }
    return largest;
}

/* The classes that may win somewhere in the cell with corners `at`, in increasing order:
   those no corner's winner beats at all four corners by more than the margin. */
static int64_t cell_candidates(const Upsample *u, const int64_t at[4][2], uint8_t *cands)
{
    int64_t winners[4], distinct = 0, corner[4];
    float winner_value[4][4];
    for (int i = 0; i < 4; i++) {
        corner[i] = at[i][0] * u->w + at[i][1];
        const int64_t k = u->winner[corner[i]];
        int seen = 0;
        for (int64_t j = 0; j < distinct; j++)
            seen |= winners[j] == k;
        if (!seen)
            winners[distinct++] = k;
    }
    for (int64_t j = 0; j < distinct; j++)
        for (int i = 0; i < 4; i++)
            winner_value[j][i] = logit_at(u, winners[j], at[i][0], at[i][1]);
    const int64_t plane = u->h * u->w;
    const float margin = u->margin;
    int64_t count = 0;
    for (int64_t k = 0; k < u->classes; k++) {
        float value[4];
        for (int i = 0; i < 4; i++)
            value[i] = logit_value(u, k * plane + corner[i]);
        int beaten = 0;
        for (int64_t j = 0; j < distinct; j++)
            beaten |= (winner_value[j][0] - value[0] > margin) & (winner_value[j][1] - value[1] > margin) &
                      (winner_value[j][2] - value[2] > margin) & (winner_value[j][3] - value[3] > margin);
        cands[count] = (uint8_t)k;
        count += !beaten;
    }
    return count;
}

/* The class filling every pixel of the cell of column run r between source rows y0 and y1,
   or -1. For -1 the cell's candidates join the open span's classes (*members of them), unless
   it already has them all. */
static int32_t plan_cell(const Upsample *u, UpsampleWork *work, int64_t r, int64_t y0, int64_t y1,
                         int64_t *members)
{
    const int64_t first = u->run_start[r], x0 = u->tx.i0[first], x1 = u->tx.i1[first];
    const int64_t at[4][2] = {{y0, x0}, {y0, x1}, {y1, x0}, {y1, x1}};
    const int64_t p0 = y0 * u->w + x0, p1 = y0 * u->w + x1, p2 = y1 * u->w + x0, p3 = y1 * u->w + x1;
    const uint8_t *winner = u->winner;
    const float *gap = u->gap, margin = u->margin;
    if (winner[p0] == winner[p1] && winner[p0] == winner[p2] && winner[p0] == winner[p3] && gap[p0] > margin &&
        gap[p1] > margin && gap[p2] > margin && gap[p3] > margin)
        return winner[p0];
    if (*members == u->classes)
        return -1;
    const int64_t count = cell_candidates(u, at, work->cands);
    if (count == 1)
        return work->cands[0];
    for (int64_t j = 0; j < count; j++) {
        *members += !work->in_span[work->cands[j]];
        work->in_span[work->cands[j]] = 1;
    }
    return -1;
}

/* Class k's horizontal passes over the columns of runs first_run .. end_run - 1, the
   reference's row = L[y, x0] + fx * (L[y, x1] - L[y, x0]) for y0 (top) and y1 (diff = the y1
   pass - top); `top` and `diff` are indexed by output column. */
VECTOR_CLONES static void horizontal_passes(const Upsample *u, int64_t k, int64_t y0, int64_t y1, int64_t first_run,
                                            int64_t end_run, float *restrict top, float *restrict diff)
{
    for (int64_t r = first_run; r < end_run; r++) {
        const int64_t first = u->run_start[r], end = u->run_start[r + 1];
        const int64_t x0 = u->tx.i0[first], x1 = u->tx.i1[first];
        const float a0 = logit_at(u, k, y0, x0), b0 = logit_at(u, k, y0, x1);
        const float a1 = logit_at(u, k, y1, x0), b1 = logit_at(u, k, y1, x1);
        const float step0 = b0 - a0, step1 = b1 - a1;
        const float *restrict frac = u->tx.frac;
        for (int64_t dx = first; dx < end; dx++) {
            top[dx] = a0 + frac[dx] * step0;
            diff[dx] = (a1 + frac[dx] * step1) - top[dx];
        }
    }
}

/* Lists the open span's classes and computes their horizontal passes. */
static void close_span(const Upsample *u, UpsampleWork *work, Span *span, int64_t y0, int64_t y1, int64_t *used)
{
    uint8_t *classes = work->classes + (span - work->spans) * u->classes;
    span->count = 0;
    for (int64_t k = 0; k < u->classes; k++) {
        if (work->in_span[k])
            classes[span->count++] = (uint8_t)k;
        work->in_span[k] = 0;
    }
    const int64_t begin = u->run_start[span->first_run], len = u->run_start[span->end_run] - begin;
    span->offset = *used;
    *used += span->count * len;
    for (int64_t j = 0; j < span->count; j++)
        horizontal_passes(u, classes[j], y0, y1, span->first_run, span->end_run,
                          work->top + span->offset + j * len - begin, work->diff + span->offset + j * len - begin);
}

/* One output row of a span: v = top + fy * diff per class; a class replaces the running best
   only when strictly larger, so the lowest class wins a tie. */
VECTOR_CLONES static void span_row(const float *restrict top, const float *restrict diff, const uint8_t *classes,
                                   int64_t count, int64_t len, float fy, float *restrict best,
                                   int32_t *restrict best_class, uint8_t *restrict labels)
{
    for (int64_t t = 0; t < len; t++) {
        best[t] = top[t] + fy * diff[t];
        best_class[t] = classes[0];
    }
    for (int64_t j = 1; j < count; j++) {
        const float *tj = top + j * len, *dj = diff + j * len;
        const int32_t klass = classes[j];
        for (int64_t t = 0; t < len; t++) {
            const float v = tj[t] + fy * dj[t], b = best[t];
            const int32_t wins = -(int32_t)(v > b); /* all ones where v wins; selects vectorise */
            best[t] = v > b ? v : b;
            best_class[t] = (best_class[t] & ~wins) | (klass & wins);
        }
    }
    for (int64_t t = 0; t < len; t++)
        labels[t] = (uint8_t)best_class[t];
}

/* The output rows sharing source rows (y0, y1): plan every cell, compute the passes of the
   spans, then write each row stretch by stretch (a memset per class or a span's compare). */
static void upsample_group(const Upsample *u, UpsampleWork *work, int64_t g, uint8_t *labels)
{
    const int64_t row0 = u->group_start[g], row_end = u->group_start[g + 1];
    const int64_t y0 = u->ty.i0[row0], y1 = u->ty.i1[row0];
    int64_t spans = 0, used = 0, members = 0;
    Span *open = NULL;
    for (int64_t r = 0; r < u->runs; r++) {
        work->fill[r] = plan_cell(u, work, r, y0, y1, &members);
        if (work->fill[r] < 0) {
            if (!open) {
                open = work->spans + spans++;
                open->first_run = r;
            }
            open->end_run = r + 1;
        } else if (open) {
            close_span(u, work, open, y0, y1, &used);
            open = NULL;
            members = 0;
        }
    }
    if (open)
        close_span(u, work, open, y0, y1, &used);
    /* the row's stretches: fill[r] >= 0 runs of the same class, and spans */
    int64_t stretches = 0;
    const Span *span = work->spans;
    for (int64_t r = 0; r < u->runs; stretches++) {
        int64_t end = r + 1;
        if (work->fill[r] >= 0) {
            while (end < u->runs && work->fill[end] == work->fill[r])
                end++;
            work->stretch_span[stretches] = NULL;
        } else {
            end = span->end_run;
            work->stretch_span[stretches] = span++;
        }
        work->stretch_run[stretches] = r;
        r = end;
    }
    work->stretch_run[stretches] = u->runs;
    for (int64_t dy = row0; dy < row_end; dy++) {
        uint8_t *row = labels + dy * u->out_w;
        for (int64_t i = 0; i < stretches; i++) {
            const int64_t first = u->run_start[work->stretch_run[i]];
            const int64_t len = u->run_start[work->stretch_run[i + 1]] - first;
            const Span *part = work->stretch_span[i];
            if (!part)
                memset(row + first, work->fill[work->stretch_run[i]], len);
            else
                span_row(work->top + part->offset, work->diff + part->offset,
                         work->classes + (part - work->spans) * u->classes, part->count, len, u->ty.frac[dy],
                         work->best, work->best_class, row + first);
        }
    }
}

static void upsample_work_free(UpsampleWork *work)
{
    free(work->fill);
    free(work->spans);
    free(work->stretch_run);
    free(work->stretch_span);
    free(work->classes);
    free(work->in_span);
    free(work->cands);
    free(work->top);
    free(work->diff);
    free(work->best);
    free(work->second);
    free(work->row);
    free(work->magnitude);
    free(work->best_class);
}

static int upsample_work_alloc(const Upsample *u, UpsampleWork *work)
{
    const int64_t width = u->out_w > u->w ? u->out_w : u->w;
    work->fill = malloc(u->runs * sizeof(int32_t));
    work->spans = malloc(u->runs * sizeof(Span));
    work->stretch_run = malloc((u->runs + 1) * sizeof(int64_t));
    work->stretch_span = malloc(u->runs * sizeof(Span *));
    work->classes = malloc(u->runs * u->classes);
    work->in_span = calloc(u->classes, 1);
    work->cands = malloc(u->classes);
    work->top = malloc(u->classes * u->out_w * sizeof(float));
    work->diff = malloc(u->classes * u->out_w * sizeof(float));
    work->best = malloc(width * sizeof(float));
    work->second = malloc(u->w * sizeof(float));
    work->row = malloc(u->w * sizeof(float));
    work->magnitude = malloc(u->w * sizeof(float));
    work->best_class = malloc(width * sizeof(int32_t));
    if (work->fill && work->spans && work->stretch_run && work->stretch_span && work->classes && work->in_span && work->cands && work->top && work->diff &&
        work->best && work->second && work->row && work->magnitude && work->best_class)
        return 0;
    upsample_work_free(work);
    return -1;
}

/* Returns -1 when a worker could not get its buffers; sets *nonfinite where a logit was inf or NaN. */
static int upsample_argmax_run(Upsample *u, uint8_t *labels, int *nonfinite)
{
    int failed = 0, seen = 0;
    float largest = 0.0f;
#pragma omp parallel num_threads(thread_count)
    {
        UpsampleWork work;
        const int ready = upsample_work_alloc(u, &work) == 0;
        if (!ready) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, ROW_CHUNK) reduction(max : largest) reduction(| : seen)
        for (int64_t y = 0; y < u->h; y++) {
            if (!ready)
                continue;
            const float row_largest = row_stats(u, &work, y, &seen);
            largest = row_largest > largest ? row_largest : largest;
        }
#pragma omp single
        u->margin = largest > MARGIN_LIMIT ? INFINITY : fmaxf(largest * MARGIN, MARGIN_FLOOR);
        /* every cell reads the stats of two rows and the margin: the barriers wait for them */
#pragma omp for schedule(dynamic, 1)
        for (int64_t g = 0; g < u->groups; g++)
            if (ready)
                upsample_group(u, &work, g, labels);
        if (ready)
            upsample_work_free(&work);
    }
    *nonfinite = seen;
    return failed ? -1 : 0;
}

static PyObject *py_upsample_argmax(PyObject *self, PyObject *args)
{
    const char *op = "upsample_argmax";
    PyObject *logits_obj;
    long height, width;
    if (!PyArg_ParseTuple(args, "Oll", &logits_obj, &height, &width))
        return NULL;
    PyArrayObject *logits = checked_logits(logits_obj, op);
    if (!logits || check_size(op, height, width, 1))
        return NULL;
    Upsample u = {.src = PyArray_DATA(logits), .is_half = PyArray_TYPE(logits) == NPY_FLOAT16,
                  .classes = PyArray_DIM(logits, 0), .h = PyArray_DIM(logits, 1), .w = PyArray_DIM(logits, 2),
                  .out_h = height, .out_w = width};
    npy_intp dims[2] = {height, width};
    PyArrayObject *labels = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_UINT8);
    if (!labels)
        return NULL;
    int status = -1, nonfinite = 0;
    const int64_t pixels = u.h * u.w;
    u.winner = malloc(pixels);
    u.gap = malloc(pixels * sizeof(float));
    if (u.winner && u.gap && !align_corners_taps(&u.ty, u.h, height)) {
        if (!align_corners_taps(&u.tx, u.w, width)) {
            u.run_start = tap_runs(&u.tx, width, &u.runs);
            u.group_start = tap_runs(&u.ty, height, &u.groups);
            if (u.run_start && u.group_start) {
                Py_BEGIN_ALLOW_THREADS
                status = upsample_argmax_run(&u, PyArray_DATA(labels), &nonfinite);
                Py_END_ALLOW_THREADS
            }
            free(u.run_start);
            free(u.group_start);
            taps_free(&u.tx);
        }
        taps_free(&u.ty);
    }
    free(u.winner);
    free(u.gap);
    if (status) {
        Py_DECREF(labels);
        return PyErr_NoMemory();
    }
    return Py_BuildValue("NO", labels, nonfinite ? Py_True : Py_False);
}

/* ---------------------------------------------------------------------------------------- */
/* argmax                                                                                    */

/* The argmax chunks return whether they saw an inf or NaN. A NaN never compares greater, so
   only class 0's is replaced (by -inf) for it to count as -inf. */
VECTOR_CLONES static int argmax_float_chunk(const float *logits, int64_t classes, int64_t pixels, int64_t count,
                                            uint8_t *restrict labels)
{
    float best[ARGMAX_CHUNK];
    int32_t best_class[ARGMAX_CHUNK];
    int nonfinite = 0;
    for (int64_t i = 0; i < count; i++) {
        const float v = logits[i];
        nonfinite |= float_nonfinite(v);
        best[i] = v == v ? v : -INFINITY;
        best_class[i] = 0;
    }
    for (int64_t k = 1; k < classes; k++) {
        const float *restrict row = logits + k * pixels;
        const int32_t klass = (int32_t)k;
        for (int64_t i = 0; i < count; i++) {
            const float v = row[i], b = best[i];
            nonfinite |= float_nonfinite(v);
            const int32_t wins = -(int32_t)(v > b); /* strict: the lowest class wins a tie */
            best[i] = v > b ? v : b;
            best_class[i] = (best_class[i] & ~wins) | (klass & wins);
        }
    }
    for (int64_t i = 0; i < count; i++)
        labels[i] = (uint8_t)best_class[i];
    return nonfinite;
}

/* float16 is compared through integer keys that order like the values: no conversion. */
VECTOR_CLONES static int argmax_half_chunk(const uint16_t *logits, int64_t classes, int64_t pixels, int64_t count,
                                           uint8_t *restrict labels)
{
    int16_t best[ARGMAX_CHUNK];
    int16_t best_class[ARGMAX_CHUNK];
    int nonfinite = 0;
    for (int64_t i = 0; i < count; i++) {
        nonfinite |= half_nonfinite(logits[i]);
        best[i] = half_order_key(logits[i]);
        best_class[i] = 0;
    }
    for (int64_t k = 1; k < classes; k++) {
        const uint16_t *restrict row = logits + k * pixels;
        const int16_t klass = (int16_t)k;
        for (int64_t i = 0; i < count; i++) {
            nonfinite |= half_nonfinite(row[i]);
            const int16_t key = half_order_key(row[i]), b = best[i];
            const int16_t wins = (int16_t)-(key > b);
            best[i] = key > b ? key : b;
            best_class[i] = (int16_t)((best_class[i] & ~wins) | (klass & wins));
        }
    }
    for (int64_t i = 0; i < count; i++)
        labels[i] = (uint8_t)best_class[i];
    return nonfinite;
}

/* Pixels are split into chunks whose running maxima stay in L1 while every class streams by.
   Returns whether a logit was inf or NaN. */
static int argmax_run(const void *logits, int is_half, int64_t classes, int64_t pixels, uint8_t *labels)
{
    const int64_t chunks = (pixels + ARGMAX_CHUNK - 1) / ARGMAX_CHUNK;
    int nonfinite = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count) reduction(| : nonfinite)
    for (int64_t chunk = 0; chunk < chunks; chunk++) {
        const int64_t start = chunk * ARGMAX_CHUNK;
        const int64_t count = pixels - start < ARGMAX_CHUNK ? pixels - start : ARGMAX_CHUNK;
        if (is_half)
            nonfinite |= argmax_half_chunk((const uint16_t *)logits + start, classes, pixels, count, labels + start);
        else
            nonfinite |= argmax_float_chunk((const float *)logits + start, classes, pixels, count, labels + start);
    }
    return nonfinite;
}

static PyObject *py_argmax(PyObject *self, PyObject *args)
{
    PyObject *logits_obj;
    if (!PyArg_ParseTuple(args, "O", &logits_obj))
        return NULL;
    PyArrayObject *logits = checked_logits(logits_obj, "argmax");
    if (!logits)
        return NULL;
    const int64_t classes = PyArray_DIM(logits, 0), pixels = PyArray_DIM(logits, 1) * PyArray_DIM(logits, 2);
    npy_intp dims[2] = {PyArray_DIM(logits, 1), PyArray_DIM(logits, 2)};
    PyArrayObject *labels = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_UINT8);
    if (!labels)
        return NULL;
    const int is_half = PyArray_TYPE(logits) == NPY_FLOAT16;
    int nonfinite;
    Py_BEGIN_ALLOW_THREADS
    nonfinite = argmax_run(PyArray_DATA(logits), is_half, classes, pixels, PyArray_DATA(labels));
    Py_END_ALLOW_THREADS
    return Py_BuildValue("NO", labels, nonfinite ? Py_True : Py_False);
}

/* ---------------------------------------------------------------------------------------- */
/* blend                                                                                     */

typedef struct {
    const uint8_t *frame, *labels;
    int64_t height, width, label_h, label_w, classes;
    const int32_t *label_col; /* nearest label column of every frame column */
    int32_t keep;             /* 256 - a */
    int32_t tint[MAX_CLASSES * 3]; /* a * colour + 128, BGR */
} Blend;

static void blend_run(const Blend *b, uint8_t *out)
{
#pragma omp parallel for schedule(dynamic, ROW_CHUNK) num_threads(thread_count)
    for (int64_t y = 0; y < b->height; y++) {
        const uint8_t *label_row = b->labels + (y * b->label_h / b->height) * b->label_w;
        const uint8_t *src = b->frame + y * b->width * 3;
        uint8_t *dst = out + y * b->width * 3;
        for (int64_t x = 0; x < b->width; x++) {
            const int64_t label = label_row[b->label_col[x]];
            const uint8_t p0 = src[3 * x], p1 = src[3 * x + 1], p2 = src[3 * x + 2];
            if (label < b->classes) {
                const int32_t *tint = b->tint + 3 * label;
                dst[3 * x] = (uint8_t)((b->keep * p0 + tint[0]) >> 8);
                dst[3 * x + 1] = (uint8_t)((b->keep * p1 + tint[1]) >> 8);
                dst[3 * x + 2] = (uint8_t)((b->keep * p2 + tint[2]) >> 8);
            } else {
                dst[3 * x] = p0;
                dst[3 * x + 1] = p1;
                dst[3 * x + 2] = p2;
            }
        }
    }
}

static PyObject *py_blend(PyObject *self, PyObject *args)
{
    const char *op = "blend";
    PyObject *frame_obj, *labels_obj, *palette_obj, *out_obj;
    int weight;
    if (!PyArg_ParseTuple(args, "OOOiO", &frame_obj, &labels_obj, &palette_obj, &weight, &out_obj))
        return NULL;
    PyArrayObject *frame = checked_frame(frame_obj, op);
    if (!frame)
        return NULL;
    PyArrayObject *labels = checked_array(labels_obj, op, "labels", NPY_UINT8, NPY_UINT8, 2, 0, "(h, w)");
    if (!labels)
        return NULL;
    PyArrayObject *palette = checked_array(palette_obj, op, "palette_rgb", NPY_UINT8, NPY_UINT8, 2, 0, "(K, 3)");
    if (!palette)
        return NULL;
    if (PyArray_DIM(palette, 1) != 3 || PyArray_DIM(palette, 0) > MAX_CLASSES) {
        PyErr_Format(input_error, "%s: palette_rgb must have shape (K, 3) with K <= %d", op, MAX_CLASSES);
        return NULL;
    }
    if (weight < 0 || weight > ALPHA_ONE) {
        PyErr_Format(input_error, "%s: alpha weight must be in 0..%d, got %d", op, ALPHA_ONE, weight);
        return NULL;
    }
    PyArrayObject *out = output_array(out_obj, op, NPY_UINT8, 3, PyArray_DIMS(frame));
    if (!out)
        return NULL;
    if (out != frame && overlaps(out, frame)) {
        Py_DECREF(out);
        PyErr_Format(input_error, "%s: out must be frame_bgr itself or not share memory with it", op);
        return NULL;
    }
    Blend *b = malloc(sizeof(Blend));
    int32_t *label_col = b ? malloc(PyArray_DIM(frame, 1) * sizeof(int32_t)) : NULL;
    if (!label_col) {
        free(b);
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    b->frame = PyArray_DATA(frame);
    b->labels = PyArray_DATA(labels);
    b->height = PyArray_DIM(frame, 0);
    b->width = PyArray_DIM(frame, 1);
    b->label_h = PyArray_DIM(labels, 0);
    b->label_w = PyArray_DIM(labels, 1);
    b->classes = PyArray_DIM(palette, 0);
    b->keep = ALPHA_ONE - weight;
    const uint8_t *rgb = PyArray_DATA(palette);
    for (int64_t k = 0; k < b->classes; k++)
        for (int c = 0; c < 3; c++)
            b->tint[3 * k + c] = weight * rgb[3 * k + 2 - c] + ALPHA_ONE / 2;
    for (int64_t x = 0; x < b->width; x++)
        label_col[x] = (int32_t)(x * b->label_w / b->width);
    b->label_col = label_col;
    Py_BEGIN_ALLOW_THREADS
    blend_run(b, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    free(label_col);
    free(b);
    return (PyObject *)out;
}

/* ---------------------------------------------------------------------------------------- */
/* threads and module                                                                         */

static PyObject *py_set_num_threads(PyObject *self, PyObject *args)
{
    int count;
    if (!PyArg_ParseTuple(args, "i", &count))
        return NULL;
    if (count < 1) {
        PyErr_Format(input_error, "set_num_threads: the thread count must be >= 1, got %d", count);
        return NULL;
    }
    thread_count = count;
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(thread_count);
}

static PyMethodDef methods[] = {
    {"preprocess", py_preprocess, METH_VARARGS,
     "preprocess(frame, height, width, mean, std, as_bytes, as_half, out, (top, left, h, w)): "
     "see runtime.ops.preprocess."},
    {"upsample_argmax", py_upsample_argmax, METH_VARARGS,
     "upsample_argmax(logits, height, width) -> (labels, any inf or NaN): see runtime.ops.upsample_argmax."},
    {"argmax", py_argmax, METH_VARARGS, "argmax(logits) -> (labels, any inf or NaN): see runtime.ops.argmax."},
    {"blend", py_blend, METH_VARARGS,
     "blend(frame, labels, palette_rgb, alpha_weight_0_to_256, out): see runtime.ops.blend."},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "Threads every later op call uses."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads every op call uses."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ops", "C implementation of runtime.ops (see runtime/ops/reference.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__ops(void)
{
    import_array();
    PyObject *reference = PyImport_ImportModule("runtime.ops.reference");
    if (!reference)
        return NULL;
    input_error = PyObject_GetAttrString(reference, "OpsInputError");
    Py_DECREF(reference);
    if (!input_error)
        return NULL;
    thread_count = omp_get_max_threads();
    return PyModule_Create(&module_def);
}
