// libpng's simplified API (png_image), which reports errors by return value
// instead of longjmp, so Swift can call it directly; and one encoder of our
// own over libpng's full API, for the speed knobs the simplified API does
// not offer (zlib level and strategy, the row filter). Its longjmp stays in C.
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/// A growing buffer the encoder writes into.
typedef struct {
    unsigned char *data;
    size_t size;
    size_t capacity;
    int failed;
} umdev_png_buffer;

static void umdev_png_append(png_structp png, png_bytep bytes, png_size_t count) {
    umdev_png_buffer *b = (umdev_png_buffer *)png_get_io_ptr(png);
    if (b->failed) return;
    if (b->size + count > b->capacity) {
        size_t want = b->capacity ? b->capacity : 65536;
        while (want < b->size + count) want *= 2;
        unsigned char *grown = (unsigned char *)realloc(b->data, want);
        if (!grown) { b->failed = 1; return; }
        b->data = grown;
        b->capacity = want;
    }
    memcpy(b->data + b->size, bytes, count);
    b->size += count;
}

static void umdev_png_flush(png_structp png) { (void)png; }

/// Encodes `height` rows of 8-bit RGB (`width` × 3 bytes each, `stride`
/// apart) as a PNG into `out` (its data is the caller's to free). `level`:
/// zlib's 0–9; `filter`: a PNG_FILTER_* set; `strategy`: zlib's Z_*. Returns
/// 1, or 0 with `out` emptied when libpng or memory failed.
static inline int umdev_png_encode_rgb(const unsigned char *rgb, int width, int height, int stride,
                                       int level, int filter, int strategy, umdev_png_buffer *out) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    if (!png) return 0;
    png_infop info = png_create_info_struct(png);
    if (!info) { png_destroy_write_struct(&png, NULL); return 0; }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(out->data);
        out->data = NULL; out->size = 0; out->capacity = 0;
        return 0;
    }
    png_set_write_fn(png, out, umdev_png_append, umdev_png_flush);
    png_set_compression_level(png, level);
    png_set_compression_strategy(png, strategy);
    png_set_filter(png, PNG_FILTER_TYPE_BASE, filter);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)stride));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (out->failed) {
        free(out->data);
        out->data = NULL; out->size = 0; out->capacity = 0;
        return 0;
    }
    return 1;
}
