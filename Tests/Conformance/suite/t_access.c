/* REGION_READ / REGION_WRITE §10, REGION_WRITE_MULTI §11, DEVICE_RESET §13. */
#include "suite.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint64_t region_size(struct conn *c, uint32_t index) {
    struct reply r;
    assert_int_equal(region_info(c, index, 32, &r), 0);
    uint64_t size = le64_at(r.payload + 16);
    reply_free(&r);
    return size;
}

static void expect_access_error(struct conn *c, uint16_t cmd, uint64_t offset, uint32_t region, uint32_t count,
                                size_t data_len, int e) {
    size_t n = sizeof(struct vu_region_access) + data_len;
    uint8_t *p = calloc(1, n);
    struct vu_region_access a = { .offset = offset, .region = region, .count = count };
    memcpy(p, &a, sizeof(a));
    EXPECT_ERRNO(c, cmd, p, n, e);
    free(p);
}

/* §10: count 0 succeeds with no data. */
static void region_read_count_zero(void **state) {
    CONN;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0, 0, NULL), 0);
}

/* §10: an access that ends past the region. */
static void region_read_past_end(void **state) {
    CONN;
    uint64_t size = region_size(c, VU_PCI_CONFIG_REGION);
    expect_access_error(c, VU_REGION_READ, size - 1, VU_PCI_CONFIG_REGION, 2, 0, EINVAL);
    expect_access_error(c, VU_REGION_READ, size, VU_PCI_CONFIG_REGION, 1, 0, EINVAL);
}

static void region_read_offset_overflow(void **state) {
    CONN;
    expect_access_error(c, VU_REGION_READ, UINT64_MAX, VU_PCI_CONFIG_REGION, 2, 0, EINVAL);
}

static void region_read_bad_index(void **state) {
    CONN;
    expect_access_error(c, VU_REGION_READ, 0, 1000, 1, 0, EINVAL);
}

/* §10: absent regions (size 0) refuse any byte. */
static void region_read_absent_region(void **state) {
    CONN;
    for (uint32_t i = 0; i < VU_PCI_NUM_REGIONS; i++) {
        if (region_size(c, i) != 0) continue;
        expect_access_error(c, VU_REGION_READ, 0, i, 1, 0, EINVAL);
        return;
    }
    skip();
}

/* §3, §10: count above max_data_xfer_size. */
static void region_read_count_above_max(void **state) {
    CONN;
    expect_access_error(c, VU_REGION_READ, 0, VU_PCI_CONFIG_REGION, VU_MAX_DATA_XFER + 1, 0, EINVAL);
}

static void region_read_short_payload(void **state) {
    CONN;
    struct vu_region_access a = { .offset = 0, .region = VU_PCI_CONFIG_REGION, .count = 4 };
    EXPECT_ERRNO(c, VU_REGION_READ, &a, 12, EINVAL);
}

static void region_read_extra_payload(void **state) {
    CONN;
    expect_access_error(c, VU_REGION_READ, 0, VU_PCI_CONFIG_REGION, 4, 4, EINVAL);
}

/* §10: the data length must equal count. */
static void region_write_count_mismatch(void **state) {
    CONN;
    expect_access_error(c, VU_REGION_WRITE, 0x3c, VU_PCI_CONFIG_REGION, 4, 2, EINVAL);
    expect_access_error(c, VU_REGION_WRITE, 0x3c, VU_PCI_CONFIG_REGION, 1, 2, EINVAL);
}

static void region_write_past_end(void **state) {
    CONN;
    uint64_t size = region_size(c, VU_PCI_CONFIG_REGION);
    expect_access_error(c, VU_REGION_WRITE, size - 2, VU_PCI_CONFIG_REGION, 4, 4, EINVAL);
}

/* §10: a write with No_reply gets no answer, even when it fails. */
static void posted_write_never_answered(void **state) {
    CONN;
    uint8_t p[sizeof(struct vu_region_access) + 1];
    struct vu_region_access a = { .offset = 0x3c, .region = VU_PCI_CONFIG_REGION, .count = 1 };
    memcpy(p, &a, sizeof(a));
    p[sizeof(a)] = 0x0b;
    assert_int_equal(send_msg(c, 900, VU_REGION_WRITE, VU_F_NO_REPLY, p, sizeof(p), NULL, 0), 0);
    a.offset = 1 << 20;
    memcpy(p, &a, sizeof(a));
    assert_int_equal(send_msg(c, 901, VU_REGION_WRITE, VU_F_NO_REPLY, p, sizeof(p), NULL, 0), 0);
    /* The next reply must be for the next request, not for 900/901. */
    uint8_t line = 0;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x3c, 1, &line), 0);
    assert_int_equal(line, 0x0b);
}

/* §10: the profile's scratch register reads back what was written. */
static void scratch_register_round_trip(void **state) {
    CONN;
    skip_unless(g_profile.scratch.present);
    uint64_t v;
    assert_int_equal(reg_write(c, &g_profile.scratch, 0xa5), 0);
    assert_int_equal(reg_read(c, &g_profile.scratch, &v), 0);
    assert_int_equal(v, 0xa5);
    assert_int_equal(reg_write(c, &g_profile.scratch, 0x5a), 0);
    assert_int_equal(reg_read(c, &g_profile.scratch, &v), 0);
    assert_int_equal(v, 0x5a);
}

/* §11: several writes in one message, answered with the count done. */
static void write_multi_valid(void **state) {
    CONN;
    skip_unless(c->server_write_multiple);
    uint8_t p[8 + 2 * sizeof(struct vu_write_multi_entry)] = { 0 };
    uint64_t n = 2;
    memcpy(p, &n, 8);
    struct vu_write_multi_entry e = { .offset = 0x3c, .region = VU_PCI_CONFIG_REGION, .count = 1, .data = { 0x22 } };
    memcpy(p + 8, &e, sizeof(e));
    e.data[0] = 0x33;
    memcpy(p + 8 + sizeof(e), &e, sizeof(e));
    struct reply r;
    assert_int_equal(request(c, VU_REGION_WRITE_MULTI, 0, p, sizeof(p), NULL, 0, &r), 0);
    assert_int_equal(r.len, 8);
    assert_int_equal(le64_at(r.payload), 2);
    reply_free(&r);
    uint8_t line;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x3c, 1, &line), 0);
    assert_int_equal(line, 0x33);
}

static void write_multi_bad_entry_count(void **state) {
    CONN;
    uint8_t p[8 + sizeof(struct vu_write_multi_entry)] = { 0 };
    uint64_t n = 1;
    memcpy(p, &n, 8);
    struct vu_write_multi_entry e = { .offset = 0x3c, .region = VU_PCI_CONFIG_REGION, .count = 9 };
    memcpy(p + 8, &e, sizeof(e));
    EXPECT_ERRNO(c, VU_REGION_WRITE_MULTI, p, sizeof(p), EINVAL);
}

static void write_multi_count_mismatch(void **state) {
    CONN;
    uint8_t p[8 + sizeof(struct vu_write_multi_entry)] = { 0 };
    uint64_t n = 3;
    memcpy(p, &n, 8);
    EXPECT_ERRNO(c, VU_REGION_WRITE_MULTI, p, sizeof(p), EINVAL);
    n = 0;
    memcpy(p, &n, 8);
    EXPECT_ERRNO(c, VU_REGION_WRITE_MULTI, p, 8, EINVAL);
}

/* §13: DEVICE_RESET is header-only; it succeeds when advertised. */
static void device_reset(void **state) {
    CONN;
    struct vu_device_info in = { .argsz = 16 };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    int has_reset = le32_at(r.payload + 4) & VU_DEVICE_FLAGS_RESET;
    reply_free(&r);
    skip_unless(has_reset);
    int scratch = g_strict && g_profile.scratch.present;   /* umdev's devices reset their scratch registers */
    if (scratch) assert_int_equal(reg_write(c, &g_profile.scratch, 0x77), 0);
    assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);
    if (scratch) {
        uint64_t v;
        assert_int_equal(reg_read(c, &g_profile.scratch, &v), 0);
        assert_int_equal(v, 0);
    }
    assert_alive(c);
}

static void device_reset_with_payload(void **state) {
    CONN;
    uint32_t junk = 0;
    EXPECT_ERRNO(c, VU_DEVICE_RESET, &junk, sizeof(junk), EINVAL);
}


/* ---- more region access: the spec's REGION_READ/WRITE formats, QEMU's use of them ---- */

/* Config space at each width: the reply echoes offset, region and count and carries count bytes. */
static void region_read_config_widths(void **state) {
    CONN;
    static const uint32_t widths[] = { 1, 2, 4, 8 };
    for (size_t i = 0; i < COUNT_OF(widths); i++) {
        struct vu_region_access a = { .offset = 0, .region = VU_PCI_CONFIG_REGION, .count = widths[i] };
        struct reply r;
        assert_int_equal(request(c, VU_REGION_READ, 0, &a, sizeof(a), NULL, 0, &r), 0);
        assert_int_equal(r.len, sizeof(a) + widths[i]);
        assert_int_equal(le64_at(r.payload), 0);
        assert_int_equal(le32_at(r.payload + 8), VU_PCI_CONFIG_REGION);
        assert_int_equal(le32_at(r.payload + 12), widths[i]);
        reply_free(&r);
    }
}

/* The REGION_WRITE reply echoes offset, region and count, without the data. */
static void region_write_reply_echo(void **state) {
    CONN;
    uint8_t p[sizeof(struct vu_region_access) + 1];
    struct vu_region_access a = { .offset = 0x3c, .region = VU_PCI_CONFIG_REGION, .count = 1 };
    memcpy(p, &a, sizeof(a));
    p[sizeof(a)] = 0x11;
    struct reply r;
    assert_int_equal(request(c, VU_REGION_WRITE, 0, p, sizeof(p), NULL, 0, &r), 0);
    assert_int_equal(r.len, sizeof(a));
    assert_int_equal(le64_at(r.payload), 0x3c);
    assert_int_equal(le32_at(r.payload + 8), VU_PCI_CONFIG_REGION);
    assert_int_equal(le32_at(r.payload + 12), 1);
    reply_free(&r);
}

static void region_write_bad_index(void **state) {
    CONN;
    expect_access_error(c, VU_REGION_WRITE, 0, 1000, 1, 1, EINVAL);
}

static void region_write_absent_region(void **state) {
    CONN;
    for (uint32_t i = 0; i < VU_PCI_NUM_REGIONS; i++) {
        if (region_size(c, i) != 0) continue;
        expect_access_error(c, VU_REGION_WRITE, 0, i, 1, 1, EINVAL);
        return;
    }
    skip_because(0, "every region of the device has a size");
}

static void region_write_offset_overflow(void **state) {
    CONN;
    expect_access_error(c, VU_REGION_WRITE, UINT64_MAX, VU_PCI_CONFIG_REGION, 2, 2, EINVAL);
}

static void region_write_short_payload(void **state) {
    CONN;
    uint8_t p[12] = { 0 };
    EXPECT_ERRNO(c, VU_REGION_WRITE, p, sizeof(p), EINVAL);
}

/* Protocol/README.md §10: count 0 succeeds with no data, for a write too. */
static void region_write_count_zero(void **state) {
    CONN;
    struct vu_region_access a = { .offset = 0, .region = VU_PCI_CONFIG_REGION, .count = 0 };
    assert_int_equal(req(c, VU_REGION_WRITE, &a, sizeof(a)), 0);
}

/* The first mappable region with its descriptor mapped (or skipped). */
static void *map_first(struct conn *c, uint32_t *index, uint64_t *size, uint64_t *at) {
    uint32_t n;
    {
        struct vu_device_info in = { .argsz = 16 };
        struct reply r;
        assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
        n = le32_at(r.payload + 8);
        reply_free(&r);
    }
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        assert_int_equal(region_info(c, i, 4096, &r), 0);
        uint32_t flags = le32_at(r.payload + 4);
        if ((flags & VU_REGION_FLAG_MMAP) && r.nfds == 1 && (flags & VU_REGION_FLAG_WRITE)) {
            *index = i;
            *size = le64_at(r.payload + 16);
            *at = le64_at(r.payload + 24);
            void *p = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED, r.fds[0], (off_t)*at);
            reply_free(&r);
            assert_true(p != MAP_FAILED);
            return p;
        }
        reply_free(&r);
    }
    return NULL;
}

/* QEMU falls back to REGION_READ/WRITE for a mappable region once it traps
   it (after an INTx), so the socket and the mapping show the same bytes. */
static void mappable_region_served_over_socket(void **state) {
    CONN;
    uint32_t index; uint64_t size, at;
    uint8_t *p = map_first(c, &index, &size, &at);
    skip_because(p != NULL, "no writable region of the device can be mapped");
    uint32_t v = 0x5a5aa5a5, got = 0;
    memcpy(p, &v, 4);
    assert_int_equal(region_read(c, index, 0, 4, &got), 0);
    assert_int_equal(got, v);
    v = 0x01020304;
    assert_int_equal(region_write(c, index, 0, 4, &v), 0);
    memcpy(&got, p, 4);
    assert_int_equal(got, v);
    munmap(p, size);
}

/* A posted write is applied before a later read answers (QEMU posts MMIO writes). */
static void posted_write_then_read(void **state) {
    CONN;
    const struct reg_access *a = &g_profile.scratch;
    uint8_t p[sizeof(struct vu_region_access) + 8] = { 0 };
    struct vu_region_access h = { .offset = a->offset, .region = a->region, .count = a->width };
    memcpy(p, &h, sizeof(h));
    p[sizeof(h)] = 0x3c;
    assert_int_equal(send_msg(c, 900, VU_REGION_WRITE, VU_F_NO_REPLY, p, sizeof(h) + a->width, NULL, 0), 0);
    uint64_t v;
    assert_int_equal(reg_read(c, a, &v), 0);
    assert_int_equal(v & 0xff, 0x3c);
}

/* The largest read a server allows (max_data_xfer_size) on a region large
   enough, as one message. */
static void region_read_largest(void **state) {
    CONN;
    uint32_t index; uint64_t size, at;
    uint8_t *p = map_first(c, &index, &size, &at);
    skip_because(p != NULL, "no writable region of the device can be mapped");
    munmap(p, size);
    uint32_t count = size < (1u << 20) ? (uint32_t)size : (1u << 20);
    struct vu_region_access a = { .offset = 0, .region = index, .count = count };
    struct reply r;
    assert_int_equal(request(c, VU_REGION_READ, 0, &a, sizeof(a), NULL, 0, &r), 0);
    assert_int_equal(r.len, sizeof(a) + count);
    reply_free(&r);
}

/* WRITE_MULTI: an entry naming a bad region is refused. */
static void write_multi_bad_region(void **state) {
    CONN;
    uint8_t p[8 + sizeof(struct vu_write_multi_entry)] = { 0 };
    uint64_t n = 1;
    memcpy(p, &n, 8);
    struct vu_write_multi_entry e = { .offset = 0, .region = 1000, .count = 1 };
    memcpy(p + 8, &e, sizeof(e));
    EXPECT_ERRNO(c, VU_REGION_WRITE_MULTI, p, sizeof(p), EINVAL);
}

/* WRITE_MULTI with No_reply is applied and not answered. */
static void write_multi_posted(void **state) {
    CONN;
    uint8_t p[8 + sizeof(struct vu_write_multi_entry)] = { 0 };
    uint64_t n = 1;
    memcpy(p, &n, 8);
    struct vu_write_multi_entry e = { .offset = 0x3c, .region = VU_PCI_CONFIG_REGION, .count = 1, .data = { 0x44 } };
    memcpy(p + 8, &e, sizeof(e));
    assert_int_equal(send_msg(c, 950, VU_REGION_WRITE_MULTI, VU_F_NO_REPLY, p, sizeof(p), NULL, 0), 0);
    uint8_t line;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x3c, 1, &line), 0);
    assert_int_equal(line, 0x44);
}

/* WRITE_MULTI with no entries. */
static void write_multi_empty(void **state) {
    CONN;
    uint64_t n = 0;
    EXPECT_ERRNO(c, VU_REGION_WRITE_MULTI, &n, sizeof(n), EINVAL);
}

/* DEVICE_RESET twice in a row, then the device still answers. */
static void device_reset_twice(void **state) {
    CONN;
    assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);
    assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);
    assert_alive(c);
}

/* QEMU's reset sequence (reference transcripts): INTx disabled, COMMAND
   cleared, DEVICE_RESET, INT_PIN read, BARs written with 0: all succeed. */
static void device_reset_qemu_sequence(void **state) {
    CONN;
    uint16_t command = 0;
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x04, 2, &command), 0);
    assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);
    uint8_t pin;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x3d, 1, &pin), 0);
    uint32_t zero = 0;
    for (uint32_t bar = 0; bar < 6; bar++) assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x10 + 4 * bar, 4, &zero), 0);
    assert_alive(c);
}

const struct check access_checks[] = {
    OPTIONAL(region_read_count_zero, "§10", "strict"),
    SPEC(region_read_past_end, "§10"),
    SPEC(region_read_offset_overflow, "§10"),
    SPEC(region_read_bad_index, "§10"),
    SPEC(region_read_absent_region, "§10"),
    SPEC(region_read_count_above_max, "§10"),
    SPEC(region_read_short_payload, "§10"),
    OPTIONAL(region_read_extra_payload, "§10", "strict"),
    SPEC(region_write_count_mismatch, "§10"),
    SPEC(region_write_past_end, "§10"),
    QEMU(posted_write_never_answered, "§10"),
    OPTIONAL(scratch_register_round_trip, "§10", "profile_scratch"),
    OPTIONAL(write_multi_valid, "§11", "write_multiple"),
    OPTIONAL(write_multi_bad_entry_count, "§11", "write_multiple"),
    OPTIONAL(write_multi_count_mismatch, "§11", "write_multiple"),
    OPTIONAL(device_reset, "§13", "reset"),
    OPTIONAL(device_reset_with_payload, "§13", "strict"),
    SPEC(region_read_config_widths, "§10"),
    SPEC(region_write_reply_echo, "§10"),
    SPEC(region_write_bad_index, "§10"),
    SPEC(region_write_absent_region, "§10"),
    SPEC(region_write_offset_overflow, "§10"),
    SPEC(region_write_short_payload, "§10"),
    OPTIONAL(region_write_count_zero, "§10", "strict"),
    { "mappable_region_served_over_socket", mappable_region_served_over_socket, setup_open, teardown_conn, CLASS_QEMU, "§10", "mmap" },
    { "posted_write_then_read", posted_write_then_read, setup_open, teardown_conn, CLASS_QEMU, "§10", "profile_scratch" },
    OPTIONAL(region_read_largest, "§10", "mmap"),
    OPTIONAL(write_multi_bad_region, "§11", "write_multiple"),
    OPTIONAL(write_multi_posted, "§11", "write_multiple"),
    OPTIONAL(write_multi_empty, "§11", "strict"),
    OPTIONAL(device_reset_twice, "§13", "reset"),
    { "device_reset_qemu_sequence", device_reset_qemu_sequence, setup_open, teardown_conn, CLASS_QEMU, "§13", "reset" },
};
const size_t access_checks_count = COUNT_OF(access_checks);
