// Interposes the allocator entry points so a benchmark can report
// allocations per operation. Each call forwards to glibc's implementation.
#include "CMallocCounter.h"
#include <stddef.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static uint64_t count;

uint64_t umdev_malloc_count(void) { return __atomic_load_n(&count, __ATOMIC_RELAXED); }
void umdev_malloc_counter_link(void) {}

static inline void bump(void) { __atomic_fetch_add(&count, 1, __ATOMIC_RELAXED); }

// A sanitizer brings its own allocator and calls malloc while it starts,
// before an instrumented interposer could run: under one, count nothing
// (the benchmark then reports no allocation figures) and leave the
// allocator to it.
#if defined(__has_feature)
#  if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#    define UMDEV_SANITIZED 1
#  endif
#endif

#ifndef UMDEV_SANITIZED

void *malloc(size_t n) { bump(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { bump(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { bump(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t al, size_t n) { bump(); return __libc_memalign(al, n); }
void *aligned_alloc(size_t al, size_t n) { bump(); return __libc_memalign(al, n); }
int posix_memalign(void **out, size_t al, size_t n) {
    if (al < sizeof(void *) || (al & (al - 1)) != 0) return EINVAL;
    bump();
    void *p = __libc_memalign(al, n);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}
#endif

int umdev_malloc_counter_active(void) {
#ifdef UMDEV_SANITIZED
    return 0;
#else
    return 1;
#endif
}
