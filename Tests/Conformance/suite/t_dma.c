/* DMA_MAP / DMA_UNMAP: Protocol/README.md §4. */
#define _GNU_SOURCE
#include "suite.h"
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RW (VU_DMA_READ_FLAG | VU_DMA_WRITE_FLAG)

static int memfd_of(size_t size) {
    int fd = memfd_create("conformance-ram", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    return fd;
}

/* §4: a window with a descriptor, then its exact unmap. */
static void dma_map_with_fd(void **state) {
    CONN;
    int fd = memfd_of(1 << 20);
    assert_int_equal(dma_map(c, RW, 0x10000, 0x100000, 0x10000, fd), 0);
    assert_int_equal(dma_unmap(c, 0, 0x100000, 0x10000), 0);
    close(fd);
}

/* §4: a window without a descriptor (QEMU's ROM and BAR windows). */
static void dma_map_without_fd(void **state) {
    CONN;
    assert_int_equal(dma_map(c, VU_DMA_READ_FLAG, 0, 0xfffc0000, 0x40000, -1), 0);
    assert_int_equal(dma_unmap(c, 0, 0xfffc0000, 0x40000), 0);
}

/* §4: overlapping an existing window: EEXIST. */
static void dma_map_overlap(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0x20000, 0x4000, -1), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x20000, 0x4000, -1), EEXIST);
    assert_int_equal(dma_map(c, RW, 0, 0x22000, 0x4000, -1), EEXIST);
    assert_int_equal(dma_map(c, RW, 0, 0x1f000, 0x2000, -1), EEXIST);
    assert_alive(c);
}

static void dma_map_zero_size(void **state) {
    CONN;
    assert_errno(dma_map(c, RW, 0, 0x20000, 0, -1), EINVAL);
    assert_alive(c);
}

static void dma_map_unaligned(void **state) {
    CONN;
    assert_errno(dma_map(c, RW, 0, 0x20001, 0x1000, -1), EINVAL);
    assert_errno(dma_map(c, RW, 0, 0x20000, 0x800, -1), EINVAL);
    assert_alive(c);
}

static void dma_map_unknown_flags(void **state) {
    CONN;
    assert_errno(dma_map(c, 0x100, 0, 0x20000, 0x1000, -1), EINVAL);
    assert_alive(c);
}

static void dma_map_range_wraps(void **state) {
    CONN;
    assert_errno(dma_map(c, RW, 0, UINT64_MAX - 0xfff, 0x2000, -1), EINVAL);
    assert_alive(c);
}

/* §4: a window beyond the end of the file it names. */
static void dma_map_beyond_file(void **state) {
    CONN;
    int fd = memfd_of(0x1000);
    assert_errno(dma_map(c, RW, 0, 0x40000, 0x2000, fd), EINVAL);
    assert_alive(c);
    close(fd);
}

static void dma_map_bad_argsz(void **state) {
    CONN;
    struct vu_dma_map m = { .argsz = 16, .flags = RW, .addr = 0x50000, .size = 0x1000 };
    EXPECT_ERRNO(c, VU_DMA_MAP, &m, sizeof(m), EINVAL);
    EXPECT_ERRNO(c, VU_DMA_MAP, &m, 24, EINVAL);
}

static void dma_map_two_fds(void **state) {
    CONN;
    int fds[2] = { memfd_of(0x1000), memfd_of(0x1000) };
    struct vu_dma_map m = { .argsz = 32, .flags = RW, .addr = 0x50000, .size = 0x1000 };
    assert_errno(request(c, VU_DMA_MAP, 0, &m, sizeof(m), fds, 2, NULL), EINVAL);
    assert_alive(c);
    close(fds[0]); close(fds[1]);
}

/* §4: unmap must name a mapped window exactly: ENOENT otherwise. */
static void dma_unmap_unmapped(void **state) {
    CONN;
    assert_errno(dma_unmap(c, 0, 0x70000, 0x1000), ENOENT);
    assert_int_equal(dma_map(c, RW, 0, 0x70000, 0x2000, -1), 0);
    assert_errno(dma_unmap(c, 0, 0x70000, 0x1000), ENOENT);
    assert_alive(c);
}

/* §4: UNMAP_ALL with address and size 0 removes every window. */
static void dma_unmap_all(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0x10000, 0x1000, -1), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x11000, 0x1000, -1), 0);
    assert_int_equal(dma_unmap(c, VU_UNMAP_ALL, 0, 0), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x10000, 0x2000, -1), 0);
}

static void dma_unmap_all_with_range(void **state) {
    CONN;
    assert_errno(dma_unmap(c, VU_UNMAP_ALL, 0x10000, 0x1000), EINVAL);
    assert_alive(c);
}

static void dma_unmap_dirty_bitmap_unsupported(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0x10000, 0x1000, -1), 0);
    assert_errno(dma_unmap(c, VU_UNMAP_GET_DIRTY_BITMAP, 0x10000, 0x1000), ENOTSUP);
    assert_alive(c);
}

static void dma_unmap_unknown_flags(void **state) {
    CONN;
    assert_errno(dma_unmap(c, 0x10, 0x10000, 0x1000), EINVAL);
    assert_alive(c);
}

/* §4: the reply to an unmap is at most the 24-byte request, echoed. */
static void dma_unmap_reply_echo(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0x90000, 0x1000, -1), 0);
    struct vu_dma_unmap u = { .argsz = 24, .flags = 0, .addr = 0x90000, .size = 0x1000 };
    struct reply r;
    assert_int_equal(request(c, VU_DMA_UNMAP, 0, &u, sizeof(u), NULL, 0, &r), 0);
    assert_true(r.len == 0 || (r.len == 24 && memcmp(r.payload, &u, 24) == 0));
    reply_free(&r);
}

/* §3, §4: max_dma_maps from VERSION bounds the windows. */
static void dma_max_dma_maps(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, "{\"capabilities\":{\"max_dma_maps\":2}}", NULL), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x1000, 0x1000, -1), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x2000, 0x1000, -1), 0);
    assert_errno(dma_map(c, RW, 0, 0x3000, 0x1000, -1), ENOSPC);
    assert_int_equal(dma_unmap(c, 0, 0x1000, 0x1000), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x3000, 0x1000, -1), 0);
}


/* ---- more of libvfio-user's test_dma_map.py / test_dma_unmap.py and the spec's rules ---- */

/* A window readable only, and one writable only. */
static void dma_map_read_only(void **state) {
    CONN;
    int fd = memfd_of(1 << 16);
    assert_int_equal(dma_map(c, VU_DMA_READ_FLAG, 0, 0x200000, 0x10000, fd), 0);
    assert_int_equal(dma_unmap(c, 0, 0x200000, 0x10000), 0);
    close(fd);
}
static void dma_map_write_only(void **state) {
    CONN;
    int fd = memfd_of(1 << 16);
    assert_int_equal(dma_map(c, VU_DMA_WRITE_FLAG, 0, 0x200000, 0x10000, fd), 0);
    assert_int_equal(dma_unmap(c, 0, 0x200000, 0x10000), 0);
    close(fd);
}

/* "The address and size of the DMA region being unmapped must match
   exactly a previous mapping": part of a window, or more than it. */
static void dma_unmap_part_refused(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0x300000, 0x4000, -1), 0);
    assert_errno(dma_unmap(c, 0, 0x300000, 0x1000), ENOENT);
    assert_errno(dma_unmap(c, 0, 0x301000, 0x1000), ENOENT);
    assert_errno(dma_unmap(c, 0, 0x300000, 0x8000), ENOENT);
    assert_int_equal(dma_unmap(c, 0, 0x300000, 0x4000), 0);
}

/* test_dma_unmap_short_write: the payload shorter than the structure. */
static void dma_unmap_short(void **state) {
    CONN;
    uint8_t p[16] = { 24 };
    EXPECT_ERRNO(c, VU_DMA_UNMAP, p, sizeof(p), EINVAL);
}

/* test_dma_unmap_bad_argsz: argsz below the structure. */
static void dma_unmap_bad_argsz(void **state) {
    CONN;
    struct vu_dma_unmap u = { .argsz = 8, .addr = 0x10000, .size = 0x1000 };
    EXPECT_ERRNO(c, VU_DMA_UNMAP, &u, sizeof(u), EINVAL);
}

/* test_dma_unmap_all_invalid_flags: UNMAP_ALL with the dirty bitmap. */
static void dma_unmap_all_with_bitmap(void **state) {
    CONN;
    struct vu_dma_unmap u = { .argsz = 24, .flags = VU_UNMAP_ALL | VU_UNMAP_GET_DIRTY_BITMAP };
    EXPECT_ERRNO(c, VU_DMA_UNMAP, &u, sizeof(u), EINVAL);
}

/* DMA_MAP shorter than its structure. */
static void dma_map_short(void **state) {
    CONN;
    uint8_t p[24] = { 32 };
    EXPECT_ERRNO(c, VU_DMA_MAP, p, sizeof(p), EINVAL);
}

/* Windows side by side are separate windows, each unmapped alone. */
static void dma_map_adjacent(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0x400000, 0x1000, -1), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x401000, 0x1000, -1), 0);
    assert_int_equal(dma_map(c, RW, 0, 0x3ff000, 0x1000, -1), 0);
    assert_int_equal(dma_unmap(c, 0, 0x401000, 0x1000), 0);
    assert_int_equal(dma_unmap(c, 0, 0x3ff000, 0x1000), 0);
    assert_int_equal(dma_unmap(c, 0, 0x400000, 0x1000), 0);
}

/* A guest's worth of windows (QEMU maps RAM, ROMs and BARs), then all unmapped. */
static void dma_map_many(void **state) {
    CONN;
    int fd = memfd_of(64 << 12);
    for (int i = 0; i < 64; i++) assert_int_equal(dma_map(c, RW, (uint64_t)i << 12, 0x10000000ull + ((uint64_t)i << 16), 0x1000, fd), 0);
    for (int i = 0; i < 64; i++) assert_int_equal(dma_unmap(c, 0, 0x10000000ull + ((uint64_t)i << 16), 0x1000), 0);
    close(fd);
}

/* A window at an offset into its file. */
static void dma_map_file_offset(void **state) {
    CONN;
    int fd = memfd_of(1 << 20);
    assert_int_equal(dma_map(c, RW, 0x80000, 0x500000, 0x80000, fd), 0);
    assert_int_equal(dma_unmap(c, 0, 0x500000, 0x80000), 0);
    close(fd);
}

/* The DMA_MAP reply carries no payload and no descriptor. */
static void dma_map_reply_empty(void **state) {
    CONN;
    struct vu_dma_map m = { .argsz = sizeof(m), .flags = RW, .addr = 0x600000, .size = 0x1000 };
    struct reply r;
    assert_int_equal(request(c, VU_DMA_MAP, 0, &m, sizeof(m), NULL, 0, &r), 0);
    assert_int_equal(r.len, 0);
    assert_int_equal(r.nfds, 0);
    reply_free(&r);
    assert_int_equal(dma_unmap(c, 0, 0x600000, 0x1000), 0);
}

/* UNMAP_ALL with nothing mapped, twice. */
static void dma_unmap_all_when_empty(void **state) {
    CONN;
    assert_int_equal(dma_unmap(c, VU_UNMAP_ALL, 0, 0), 0);
    assert_int_equal(dma_unmap(c, VU_UNMAP_ALL, 0, 0), 0);
}

/* Two windows from one file. */
static void dma_map_same_fd_twice(void **state) {
    CONN;
    int fd = memfd_of(2 << 16);
    assert_int_equal(dma_map(c, RW, 0, 0x700000, 0x10000, fd), 0);
    assert_int_equal(dma_map(c, RW, 0x10000, 0x800000, 0x10000, fd), 0);
    close(fd);
    assert_int_equal(dma_unmap(c, 0, 0x700000, 0x10000), 0);
    assert_int_equal(dma_unmap(c, 0, 0x800000, 0x10000), 0);
}

/* A window high in the address space, ending at its top. */
static void dma_map_top_of_address_space(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0xfffffffffffff000ull, 0x1000, -1), 0);
    assert_int_equal(dma_unmap(c, 0, 0xfffffffffffff000ull, 0x1000), 0);
}

/* Windows are the connection's: a new client starts with none. */
static void dma_windows_released_with_client(void **state) {
    CONN;
    skip_because(!g_one_shot, "the server serves one connection");
    assert_int_equal(dma_map(c, RW, 0, 0x900000, 0x1000, -1), 0);
    conn_close(c);
    conn_open(c);
    assert_int_equal(dma_map(c, RW, 0, 0x900000, 0x1000, -1), 0);
    assert_int_equal(dma_unmap(c, 0, 0x900000, 0x1000), 0);
}

/* An overlap at the end of a window, and a window containing it: EEXIST too. */
static void dma_map_overlap_edges(void **state) {
    CONN;
    assert_int_equal(dma_map(c, RW, 0, 0xa00000, 0x4000, -1), 0);
    assert_int_equal(dma_map(c, RW, 0, 0xa03000, 0x2000, -1), EEXIST);
    assert_int_equal(dma_map(c, RW, 0, 0x9ff000, 0x8000, -1), EEXIST);
    assert_int_equal(dma_unmap(c, 0, 0xa00000, 0x4000), 0);
}

const struct check dma_checks[] = {
    SPEC(dma_map_with_fd, "§4"),
    QEMU(dma_map_without_fd, "§4"),
    SPEC(dma_map_overlap, "§4"),
    OPTIONAL(dma_map_zero_size, "§4", "strict"),
    OPTIONAL(dma_map_unaligned, "§4", "strict"),
    SPEC(dma_map_unknown_flags, "§4"),
    OPTIONAL(dma_map_range_wraps, "§4", "strict"),
    OPTIONAL(dma_map_beyond_file, "§4", "strict"),
    SPEC(dma_map_bad_argsz, "§4"),
    OPTIONAL(dma_map_two_fds, "§4", "strict"),
    SPEC(dma_unmap_unmapped, "§4"),
    SPEC(dma_unmap_all, "§4"),
    SPEC(dma_unmap_all_with_range, "§4"),
    SPEC(dma_unmap_dirty_bitmap_unsupported, "§4"),
    SPEC(dma_unmap_unknown_flags, "§4"),
    QEMU(dma_unmap_reply_echo, "§4"),
    OPTIONAL_RAW(dma_max_dma_maps, "§4", "strict"),
    SPEC(dma_map_read_only, "§4"),
    SPEC(dma_map_write_only, "§4"),
    SPEC(dma_unmap_part_refused, "§4"),
    SPEC(dma_unmap_short, "§4"),
    SPEC(dma_unmap_bad_argsz, "§4"),
    SPEC(dma_unmap_all_with_bitmap, "§4"),
    SPEC(dma_map_short, "§4"),
    QEMU(dma_map_adjacent, "§4"),
    QEMU(dma_map_many, "§4"),
    SPEC(dma_map_file_offset, "§4"),
    QEMU(dma_map_reply_empty, "§4"),
    SPEC(dma_unmap_all_when_empty, "§4"),
    SPEC(dma_map_same_fd_twice, "§4"),
    SPEC(dma_map_top_of_address_space, "§4"),
    SPEC(dma_windows_released_with_client, "§4"),
    SPEC(dma_map_overlap_edges, "§4"),
};
const size_t dma_checks_count = COUNT_OF(dma_checks);
