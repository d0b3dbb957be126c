/* REGION_READ / REGION_WRITE §10, REGION_WRITE_MULTI §11, DEVICE_RESET §13. */
#include "suite.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
    if (g_profile.scratch.present) assert_int_equal(reg_write(c, &g_profile.scratch, 0x77), 0);
    assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);
    if (g_profile.scratch.present) {
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
};
const size_t access_checks_count = COUNT_OF(access_checks);
