// Counts heap allocations made by the process, for `umdev bench`.
// The counter is only read by the benchmark; every allocation goes through
// glibc's own allocator (__libc_malloc & co.).
#ifndef UMDEV_MALLOC_COUNTER_H
#define UMDEV_MALLOC_COUNTER_H
#include <stdint.h>
/// Allocations (malloc, calloc, realloc, memalign family) since process start.
uint64_t umdev_malloc_count(void);
/// Forces the linker to keep the interposer in the executable.
void umdev_malloc_counter_link(void);
/// 0 in a sanitizer build, where the sanitizer owns the allocator and nothing is counted.
int umdev_malloc_counter_active(void);
#endif
