/* DEVICE_FEATURE and the migration v2 state machine §14, MIG_DATA §15;
   Linux VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE. */
#include "suite.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int migratable(struct conn *c) {
    int rc = feature(c, VU_FEATURE_PROBE | VU_FEATURE_GET | VU_FEATURE_MIGRATION, NULL, 0, 16, NULL);
    if (g_profile.migration >= 0) assert_int_equal(rc == 0, g_profile.migration);
    if (rc != 0) assert_errno(rc, ENOTTY);
    assert_alive(c);
    return rc == 0;
}

/* §14: PROBE and GET of the MIGRATION feature: STOP_COPY is mandatory. */
static void feature_migration_flags(void **state) {
    CONN;
    skip_unless(migratable(c));
    struct reply r;
    assert_int_equal(feature(c, VU_FEATURE_GET | VU_FEATURE_MIGRATION, NULL, 0, 16, &r), 0);
    assert_int_equal(r.len, 16);
    assert_true(le64_at(r.payload + 8) & VU_MIGRATION_STOP_COPY);
    reply_free(&r);
}

/* §14: the required arcs, and multi-step changes. */
static void feature_state_transitions(void **state) {
    CONN;
    skip_unless(migratable(c));
    uint32_t s = 0;
    assert_int_equal(get_state(c, &s), 0);
    assert_int_equal(s, VU_STATE_RUNNING);
    uint32_t path[] = { VU_STATE_STOP, VU_STATE_STOP_COPY, VU_STATE_STOP, VU_STATE_RUNNING, VU_STATE_STOP_COPY, VU_STATE_RUNNING };
    for (size_t i = 0; i < COUNT_OF(path); i++) {
        assert_int_equal(set_state(c, path[i]), 0);
        assert_int_equal(get_state(c, &s), 0);
        assert_int_equal(s, path[i]);
    }
}

/* §14: STOP_COPY → PRE_COPY, P2P states where not offered, ERROR and
   unknown states are refused with EINVAL. */
static void feature_invalid_transitions(void **state) {
    CONN;
    skip_unless(migratable(c));
    struct reply r;
    assert_int_equal(feature(c, VU_FEATURE_GET | VU_FEATURE_MIGRATION, NULL, 0, 16, &r), 0);
    uint64_t flags = le64_at(r.payload + 8);
    reply_free(&r);
    assert_errno(set_state(c, VU_STATE_ERROR), EINVAL);
    assert_errno(set_state(c, 42), EINVAL);
    if (!(flags & VU_MIGRATION_P2P)) assert_errno(set_state(c, VU_STATE_RUNNING_P2P), EINVAL);
    if (flags & VU_MIGRATION_PRE_COPY) {
        assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
        assert_errno(set_state(c, VU_STATE_PRE_COPY), EINVAL);
        assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    }
    assert_alive(c);
}

/* §14: GET together with SET (no PROBE) is refused. */
static void feature_get_and_set_refused(void **state) {
    CONN;
    int rc = feature(c, VU_FEATURE_GET | VU_FEATURE_SET | VU_FEATURE_MIG_DEVICE_STATE, "\2\0\0\0\0\0\0\0", 8, 16, NULL);
    assert_true(rc == EINVAL || rc == ENOTTY);
    assert_alive(c);
}

/* §14: DMA dirty logging is unsupported; unknown features are ENOTTY. */
static void feature_dirty_logging_unsupported(void **state) {
    CONN;
    uint8_t d[16] = { 0 };
    assert_errno(feature(c, VU_FEATURE_SET | VU_FEATURE_DMA_LOGGING_START, d, sizeof(d), 24, NULL), ENOTTY);
    assert_alive(c);
    assert_errno(feature(c, VU_FEATURE_GET | 0x7ff, NULL, 0, 16, NULL), ENOTTY);
    assert_alive(c);
}

static void feature_short_or_bad_flags(void **state) {
    CONN;
    uint32_t argsz = 8;
    EXPECT_ERRNO(c, VU_DEVICE_FEATURE, &argsz, 4, EINVAL);
    struct vu_device_feature f = { .argsz = 16, .flags = (1u << 20) | VU_FEATURE_GET | VU_FEATURE_MIGRATION };
    EXPECT_ERRNO(c, VU_DEVICE_FEATURE, &f, sizeof(f), EINVAL);
}

/* §15: MIG_DATA outside the saving/resuming states is refused. */
static void mig_data_outside_states(void **state) {
    CONN;
    skip_unless(migratable(c));
    struct vu_mig_data m = { .argsz = 8 + 64, .size = 64 };
    EXPECT_ERRNO(c, VU_MIG_DATA_READ, &m, sizeof(m), EINVAL);
    uint8_t w[8 + 4] = { 12, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4 };
    EXPECT_ERRNO(c, VU_MIG_DATA_WRITE, w, sizeof(w), EINVAL);
}

static void mig_data_bad_sizes(void **state) {
    CONN;
    skip_unless(migratable(c));
    struct vu_mig_data m = { .argsz = 8, .size = 64 };
    EXPECT_ERRNO(c, VU_MIG_DATA_READ, &m, sizeof(m), EINVAL);
    uint8_t w[8 + 2] = { 16, 0, 0, 0, 8, 0, 0, 0, 1, 2 };
    EXPECT_ERRNO(c, VU_MIG_DATA_WRITE, w, sizeof(w), EINVAL);
}

static uint8_t *read_stream(struct conn *c, size_t *len) {
    uint8_t *out = NULL;
    *len = 0;
    for (;;) {
        struct vu_mig_data m = { .argsz = 8 + 512, .size = 512 };
        struct reply r;
        assert_int_equal(request(c, VU_MIG_DATA_READ, 0, &m, sizeof(m), NULL, 0, &r), 0);
        uint32_t n = le32_at(r.payload + 4);
        assert_int_equal(r.len, 8 + n);
        out = realloc(out, *len + n + 1);
        memcpy(out + *len, r.payload + 8, n);
        *len += n;
        reply_free(&r);
        if (n < 512) return out;
    }
}

/* Writes a stream in MIG_DATA_WRITE chunks no larger than the server takes
   (§3: max_data_xfer_size is at least 1 MiB; 512 KiB is always within it). */
static int write_stream(struct conn *c, const uint8_t *stream, size_t len) {
    const size_t chunk = 512 << 10;
    uint8_t *w = malloc(8 + chunk);
    int rc = 0;
    for (size_t at = 0; at < len && rc == 0; at += chunk) {
        size_t n = len - at < chunk ? len - at : chunk;
        struct vu_mig_data m = { .argsz = (uint32_t)(8 + n), .size = (uint32_t)n };
        memcpy(w, &m, 8);
        memcpy(w + 8, stream + at, n);
        rc = req(c, VU_MIG_DATA_WRITE, w, 8 + n);
    }
    free(w);
    return rc;
}

/* §15, §19: STOP_COPY stream read, then resumed into the same device
   (state restored); a corrupted stream is refused at RESUMING → STOP. */
static void mig_data_round_trip(void **state) {
    CONN;
    skip_unless(migratable(c));
    uint64_t v;
    if (g_profile.scratch.present) assert_int_equal(reg_write(c, &g_profile.scratch, 0x3c), 0);
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    size_t len;
    uint8_t *stream = read_stream(c, &len);
    assert_true(len > 0);
    assert_int_equal(set_state(c, VU_STATE_STOP), 0);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    if (g_profile.scratch.present) assert_int_equal(reg_write(c, &g_profile.scratch, 0x00), 0);

    /* Corrupt copy first: refused, and the device stays in RESUMING. */
    assert_int_equal(set_state(c, VU_STATE_RESUMING), 0);
    uint8_t *bad = malloc(len);
    memcpy(bad, stream, len);
    bad[0] ^= 0xff;
    assert_int_equal(write_stream(c, bad, len), 0);
    assert_errno(set_state(c, VU_STATE_STOP), EINVAL);
    assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);

    assert_int_equal(set_state(c, VU_STATE_STOP), 0);
    assert_int_equal(set_state(c, VU_STATE_RESUMING), 0);
    assert_int_equal(write_stream(c, stream, len), 0);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    if (g_profile.scratch.present) {
        assert_int_equal(reg_read(c, &g_profile.scratch, &v), 0);
        assert_int_equal(v, 0x3c);
    }
    free(bad); free(stream);
}

const struct check migration_checks[] = {
    OPTIONAL(feature_migration_flags, "§14", "migration"),
    OPTIONAL(feature_state_transitions, "§14", "migration"),
    OPTIONAL(feature_invalid_transitions, "§14", "migration"),
    SPEC(feature_get_and_set_refused, "§14"),
    OPTIONAL(feature_dirty_logging_unsupported, "§14", "strict"),
    SPEC(feature_short_or_bad_flags, "§14"),
    OPTIONAL(mig_data_outside_states, "§15", "migration"),
    OPTIONAL(mig_data_bad_sizes, "§15", "migration"),
    OPTIONAL(mig_data_round_trip, "§15", "migration"),
};
const size_t migration_checks_count = COUNT_OF(migration_checks);
