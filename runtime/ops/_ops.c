/*
 * C implementation of runtime.ops (OpenMP over rows, GIL released while computing).
 *
 * runtime/ops/reference.py defines what every function computes, including the rounding
 * rules; the code below follows the same formulas in the same float operation order, except
 * that preprocess folds / 255, - mean and / std into one multiply-add (within 1e-6). Build
 * with -ffp-contract=off so the compiler does not fuse them into FMAs and change results.
 * Arguments arrive already normalised by the wrappers in runtime/ops/__init__.py; arrays are
 * validated here because this code reads their memory directly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WEIGHT_ONE 2048   /* uint8 resize weights in 1/2048 */
#define WEIGHT_SHIFT 22   /* two weights multiplied: 2^11 * 2^11 */
#define ALPHA_ONE 256
#define MAX_CLASSES 256
#define ARGMAX_CHUNK 2048

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

/* Orders float16 bit patterns like their values (+0 and -0 equal); NaN is outside the contract. */
static inline int16_t half_order_key(uint16_t half)
{
    const int16_t magnitude = (int16_t)(half & 0x7fffu);
    return (half & 0x8000u) ? (int16_t)-magnitude : magnitude;
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

static int check_size(const char *op, long height, long width)
{
    if (height < 1 || width < 1) {
        PyErr_Format(input_error, "%s: out_hw must be positive, got (%ld, %ld)", op, height, width);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* preprocess                                                                                */

typedef struct {
    const uint8_t *src;
    int64_t src_h, src_w, h, w;
    Taps ty, tx;
    float scale[3], bias[3]; /* RGB: (v / 255 - mean) / std == v * scale + bias */
} Resize;

/* Returns -1 when a worker could not get its buffers. float16 output is computed into float
   rows first and converted by plane, which vectorises. */
static int preprocess_float(const Resize *r, float *out32, uint16_t *out16)
{
    int failed = 0;
    const int64_t row_len = r->src_w * 3, plane = r->h * r->w;
#pragma omp parallel num_threads(thread_count)
    {
        float *rows = malloc(row_len * sizeof(float)); /* vertical pass, BGR interleaved */
        float *scratch = out16 ? malloc(3 * r->w * sizeof(float)) : NULL;
        const int ready = rows && (scratch || !out16);
        if (!ready) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t dy = 0; dy < r->h; dy++) {
            if (!ready)
                continue;
            const uint8_t *s0 = r->src + r->ty.i0[dy] * row_len, *s1 = r->src + r->ty.i1[dy] * row_len;
            const float wy = r->ty.frac[dy], wy0 = 1.0f - wy;
            for (int64_t i = 0; i < row_len; i++)
                rows[i] = wy0 * (float)s0[i] + wy * (float)s1[i];
            float *dst[3];
            for (int c = 0; c < 3; c++)
                dst[c] = out16 ? scratch + c * r->w : out32 + c * plane + dy * r->w;
            for (int64_t dx = 0; dx < r->w; dx++) {
                const float *p0 = rows + 3 * (int64_t)r->tx.i0[dx], *p1 = rows + 3 * (int64_t)r->tx.i1[dx];
                const float wx = r->tx.frac[dx], wx0 = 1.0f - wx;
                for (int c = 0; c < 3; c++) /* RGB plane c reads BGR channel 2 - c */
                    dst[c][dx] = (wx0 * p0[2 - c] + wx * p1[2 - c]) * r->scale[c] + r->bias[c];
            }
            if (out16)
                for (int c = 0; c < 3; c++)
                    floats_to_halves(dst[c], out16 + c * plane + dy * r->w, r->w);
        }
        free(rows);
        free(scratch);
    }
    return failed ? -1 : 0;
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
#pragma omp for schedule(static)
        for (int64_t dy = 0; dy < r->h; dy++) {
            if (!rows)
                continue;
            const uint8_t *s0 = r->src + r->ty.i0[dy] * row_len, *s1 = r->src + r->ty.i1[dy] * row_len;
            const int32_t wy = r->ty.frac_q[dy], wy0 = WEIGHT_ONE - wy;
            for (int64_t i = 0; i < row_len; i++)
                rows[i] = wy0 * (int32_t)s0[i] + wy * (int32_t)s1[i];
            uint8_t *dst = out + dy * r->w * 3;
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
    long height, width;
    double mean[3], std[3];
    int as_bytes, as_half;
    if (!PyArg_ParseTuple(args, "Oll(ddd)(ddd)ppO", &frame_obj, &height, &width, &mean[0], &mean[1], &mean[2],
                          &std[0], &std[1], &std[2], &as_bytes, &as_half, &out_obj))
        return NULL;
    PyArrayObject *frame = checked_frame(frame_obj, op);
    if (!frame || check_size(op, height, width))
        return NULL;
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
                .h = height, .w = width};
    for (int c = 0; c < 3; c++) {
        r.scale[c] = (float)(1.0 / (255.0 * std[c]));
        r.bias[c] = (float)(-mean[c] / std[c]);
    }
    if (half_pixel_taps(&r.ty, r.src_h, height)) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    if (half_pixel_taps(&r.tx, r.src_w, width)) {
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

typedef struct {
    const void *src; /* float32 or float16 bits */
    int is_half;
    int64_t classes, h, w, out_h, out_w;
    Taps ty, tx;
    int64_t runs;       /* maximal runs of output columns with the same (i0, i1) */
    int32_t *run_start; /* runs + 1 entries; the last is out_w */
} Upsample;

static int32_t *column_runs(const Taps *tx, int64_t width, int64_t *runs)
{
    int32_t *start = malloc((width + 1) * sizeof(int32_t));
    if (!start)
        return NULL;
    int64_t count = 0;
    for (int64_t dx = 0; dx < width; dx++)
        if (dx == 0 || tx->i0[dx] != tx->i0[dx - 1] || tx->i1[dx] != tx->i1[dx - 1])
            start[count++] = (int32_t)dx;
    start[count] = (int32_t)width;
    *runs = count;
    return start;
}

/* Horizontal pass of source row y for every class: dst[k * out_w + dx]. Output columns come
   in runs that share both taps, so each run loads its two source values once. */
VECTOR_CLONES static void upsample_row(const Upsample *u, int64_t y, float *dst)
{
    const float *frac = u->tx.frac;
    for (int64_t k = 0; k < u->classes; k++) {
        const int64_t base = (k * u->h + y) * u->w;
        float *row = dst + k * u->out_w;
        for (int64_t r = 0; r < u->runs; r++) {
            const int64_t first = u->run_start[r], end = u->run_start[r + 1];
            float a, b;
            if (u->is_half) {
                const uint16_t *src = (const uint16_t *)u->src + base;
                a = half_to_float(src[u->tx.i0[first]]);
                b = half_to_float(src[u->tx.i1[first]]);
            } else {
                const float *src = (const float *)u->src + base;
                a = src[u->tx.i0[first]];
                b = src[u->tx.i1[first]];
            }
            const float step = b - a;
            for (int64_t dx = first; dx < end; dx++)
                row[dx] = a + frac[dx] * step;
        }
    }
}

/* One output row from a pair of horizontal passes: v = top + fy * diff per class, where
   diff = bottom - top; a class replaces the running best only when strictly larger. */
VECTOR_CLONES static void upsample_compare_row(const float *restrict top, const float *restrict diff,
                                               int64_t classes, int64_t width, float fy, float *restrict best,
                                               int32_t *restrict best_class, uint8_t *restrict labels)
{
    for (int64_t dx = 0; dx < width; dx++) {
        best[dx] = top[dx] + fy * diff[dx];
        best_class[dx] = 0;
    }
    for (int64_t k = 1; k < classes; k++) {
        const float *t = top + k * width, *d = diff + k * width;
        const int32_t klass = (int32_t)k;
        for (int64_t dx = 0; dx < width; dx++) {
            const float v = t[dx] + fy * d[dx], b = best[dx];
            const int32_t wins = -(int32_t)(v > b); /* all ones where v wins; selects vectorise */
            best[dx] = v > b ? v : b;
            best_class[dx] = (best_class[dx] & ~wins) | (klass & wins);
        }
    }
    for (int64_t dx = 0; dx < width; dx++)
        labels[dx] = (uint8_t)best_class[dx];
}

/* Each worker keeps the horizontal passes of the last two source rows it used and their
   difference: output rows between the same pair of source rows then cost one multiply-add
   and one compare per class and pixel. */
static int upsample_argmax_run(const Upsample *u, uint8_t *labels)
{
    int failed = 0;
    const int64_t width = u->out_w, slot_len = u->classes * u->out_w;
#pragma omp parallel num_threads(thread_count)
    {
        float *slots = malloc(3 * slot_len * sizeof(float)); /* two source rows, then the diff */
        float *best = malloc(width * sizeof(float));
        int32_t *best_class = malloc(width * sizeof(int32_t));
        int64_t slot_row[2] = {-1, -1}, diff_rows[2] = {-1, -1};
        int top_slot = 0;
        const int ready = slots && best && best_class;
        if (!ready) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t dy = 0; dy < u->out_h; dy++) {
            if (!ready)
                continue;
            const int64_t y0 = u->ty.i0[dy], y1 = u->ty.i1[dy];
            float *diff = slots + 2 * slot_len;
            if (diff_rows[0] != y0 || diff_rows[1] != y1) {
                int s0 = slot_row[0] == y0 ? 0 : slot_row[1] == y0 ? 1 : -1;
                if (s0 < 0) {
                    s0 = slot_row[0] == y1 ? 1 : 0; /* keep y1 if it is cached */
                    upsample_row(u, y0, slots + s0 * slot_len);
                    slot_row[s0] = y0;
                }
                int s1 = slot_row[0] == y1 ? 0 : slot_row[1] == y1 ? 1 : -1;
                if (s1 < 0) {
                    s1 = 1 - s0;
                    upsample_row(u, y1, slots + s1 * slot_len);
                    slot_row[s1] = y1;
                }
                const float *top = slots + s0 * slot_len, *bottom = slots + s1 * slot_len;
                for (int64_t i = 0; i < slot_len; i++)
                    diff[i] = bottom[i] - top[i];
                top_slot = s0;
                diff_rows[0] = y0;
                diff_rows[1] = y1;
            }
            upsample_compare_row(slots + top_slot * slot_len, diff, u->classes, width, u->ty.frac[dy], best,
                                 best_class, labels + dy * width);
        }
        free(slots);
        free(best);
        free(best_class);
    }
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
    if (!logits || check_size(op, height, width))
        return NULL;
    Upsample u = {.src = PyArray_DATA(logits), .is_half = PyArray_TYPE(logits) == NPY_FLOAT16,
                  .classes = PyArray_DIM(logits, 0), .h = PyArray_DIM(logits, 1), .w = PyArray_DIM(logits, 2),
                  .out_h = height, .out_w = width};
    npy_intp dims[2] = {height, width};
    PyArrayObject *labels = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_UINT8);
    if (!labels)
        return NULL;
    if (align_corners_taps(&u.ty, u.h, height)) {
        Py_DECREF(labels);
        return PyErr_NoMemory();
    }
    if (align_corners_taps(&u.tx, u.w, width)) {
        taps_free(&u.ty);
        Py_DECREF(labels);
        return PyErr_NoMemory();
    }
    u.run_start = column_runs(&u.tx, width, &u.runs);
    int status = -1;
    if (u.run_start) {
        Py_BEGIN_ALLOW_THREADS
        status = upsample_argmax_run(&u, PyArray_DATA(labels));
        Py_END_ALLOW_THREADS
    }
    free(u.run_start);
    taps_free(&u.ty);
    taps_free(&u.tx);
    if (status) {
        Py_DECREF(labels);
        return PyErr_NoMemory();
    }
    return (PyObject *)labels;
}

/* ---------------------------------------------------------------------------------------- */
/* argmax                                                                                    */

VECTOR_CLONES static void argmax_float_chunk(const float *logits, int64_t classes, int64_t pixels, int64_t count,
                                             uint8_t *restrict labels)
{
    float best[ARGMAX_CHUNK];
    int32_t best_class[ARGMAX_CHUNK];
    memcpy(best, logits, count * sizeof(float));
    memset(best_class, 0, count * sizeof(int32_t));
    for (int64_t k = 1; k < classes; k++) {
        const float *restrict row = logits + k * pixels;
        const int32_t klass = (int32_t)k;
        for (int64_t i = 0; i < count; i++) {
            const float v = row[i], b = best[i];
            const int32_t wins = -(int32_t)(v > b); /* strict: the lowest class wins a tie */
            best[i] = v > b ? v : b;
            best_class[i] = (best_class[i] & ~wins) | (klass & wins);
        }
    }
    for (int64_t i = 0; i < count; i++)
        labels[i] = (uint8_t)best_class[i];
}

/* float16 is compared through integer keys that order like the values: no conversion. */
VECTOR_CLONES static void argmax_half_chunk(const uint16_t *logits, int64_t classes, int64_t pixels, int64_t count,
                                            uint8_t *restrict labels)
{
    int16_t best[ARGMAX_CHUNK];
    int16_t best_class[ARGMAX_CHUNK];
    for (int64_t i = 0; i < count; i++) {
        best[i] = half_order_key(logits[i]);
        best_class[i] = 0;
    }
    for (int64_t k = 1; k < classes; k++) {
        const uint16_t *restrict row = logits + k * pixels;
        const int16_t klass = (int16_t)k;
        for (int64_t i = 0; i < count; i++) {
            const int16_t key = half_order_key(row[i]), b = best[i];
            const int16_t wins = (int16_t)-(key > b);
            best[i] = key > b ? key : b;
            best_class[i] = (int16_t)((best_class[i] & ~wins) | (klass & wins));
        }
    }
    for (int64_t i = 0; i < count; i++)
        labels[i] = (uint8_t)best_class[i];
}

/* Pixels are split into chunks whose running maxima stay in L1 while every class streams by. */
static void argmax_run(const void *logits, int is_half, int64_t classes, int64_t pixels, uint8_t *labels)
{
    const int64_t chunks = (pixels + ARGMAX_CHUNK - 1) / ARGMAX_CHUNK;
#pragma omp parallel for schedule(static) num_threads(thread_count)
    for (int64_t chunk = 0; chunk < chunks; chunk++) {
        const int64_t start = chunk * ARGMAX_CHUNK;
        const int64_t count = pixels - start < ARGMAX_CHUNK ? pixels - start : ARGMAX_CHUNK;
        if (is_half)
            argmax_half_chunk((const uint16_t *)logits + start, classes, pixels, count, labels + start);
        else
            argmax_float_chunk((const float *)logits + start, classes, pixels, count, labels + start);
    }
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
    Py_BEGIN_ALLOW_THREADS
    argmax_run(PyArray_DATA(logits), is_half, classes, pixels, PyArray_DATA(labels));
    Py_END_ALLOW_THREADS
    return (PyObject *)labels;
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
#pragma omp parallel for schedule(static) num_threads(thread_count)
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
     "preprocess(frame, height, width, mean, std, as_bytes, as_half, out): see runtime.ops.preprocess."},
    {"upsample_argmax", py_upsample_argmax, METH_VARARGS,
     "upsample_argmax(logits, height, width): see runtime.ops.upsample_argmax."},
    {"argmax", py_argmax, METH_VARARGS, "argmax(logits): see runtime.ops.argmax."},
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
