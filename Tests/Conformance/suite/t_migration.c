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

    /* --strict (Protocol/README.md §19): a corrupt copy is refused, and the
       device stays in RESUMING until reset. */
    uint8_t *bad = malloc(len);
    if (g_strict) {
        assert_int_equal(set_state(c, VU_STATE_RESUMING), 0);
        memcpy(bad, stream, len);
        bad[0] ^= 0xff;
        assert_int_equal(write_stream(c, bad, len), 0);
        assert_errno(set_state(c, VU_STATE_STOP), EINVAL);
        assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);
    }

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


/* ---- more of libvfio-user's test_migration.py ---- */

/* test_device_feature_probe: PROBE of the state feature, GET and SET. */
static void feature_probe_device_state(void **state) {
    CONN;
    assert_int_equal(feature(c, VU_FEATURE_PROBE | VU_FEATURE_GET | VU_FEATURE_MIG_DEVICE_STATE, NULL, 0, 16, NULL), 0);
    assert_int_equal(feature(c, VU_FEATURE_PROBE | VU_FEATURE_SET | VU_FEATURE_MIG_DEVICE_STATE, NULL, 0, 16, NULL), 0);
}

/* test_device_feature_migration_get: the reply's flags say STOP_COPY. */
static void feature_migration_get_reply(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(feature(c, VU_FEATURE_GET | VU_FEATURE_MIGRATION, NULL, 0, 16, &r), 0);
    assert_true(r.len >= 16);
    assert_int_equal(le32_at(r.payload + 4) & VU_FEATURE_MASK, VU_FEATURE_MIGRATION);
    assert_true(le64_at(r.payload + 8) & VU_MIGRATION_STOP_COPY);
    reply_free(&r);
}

/* test_device_feature_bad_argsz_get_migration: argsz too small for the answer. */
static void feature_migration_small_argsz(void **state) {
    CONN;
    EXPECT_ERRNO(c, VU_DEVICE_FEATURE, (&(struct vu_device_feature){ .argsz = 8, .flags = VU_FEATURE_GET | VU_FEATURE_MIGRATION }),
                 sizeof(struct vu_device_feature), EINVAL);
}

/* test_device_feature_bad_argsz_set: SET of the state without room for it. */
static void feature_set_state_small_argsz(void **state) {
    CONN;
    uint8_t p[8 + 8] = { 0 };
    struct vu_device_feature f = { .argsz = 8, .flags = VU_FEATURE_SET | VU_FEATURE_MIG_DEVICE_STATE };
    memcpy(p, &f, sizeof(f));
    p[8] = VU_STATE_STOP;
    EXPECT_ERRNO(c, VU_DEVICE_FEATURE, p, sizeof(p), EINVAL);
}

/* test_device_feature_unsupported_operation: a feature number nobody defines. */
static void feature_unknown_probe(void **state) {
    CONN;
    int rc = feature(c, VU_FEATURE_PROBE | VU_FEATURE_GET | 0x7ff, NULL, 0, 16, NULL);
    assert_true(rc > 0);
    assert_alive(c);
}

/* No operation at all (neither GET, SET nor PROBE). */
static void feature_no_operation(void **state) {
    CONN;
    int rc = feature(c, VU_FEATURE_MIGRATION, NULL, 0, 16, NULL);
    assert_true(rc > 0);
    assert_alive(c);
}

/* Setting the state it is in succeeds. */
static void feature_set_current_state(void **state) {
    CONN;
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    uint32_t s;
    assert_int_equal(get_state(c, &s), 0);
    assert_int_equal(s, VU_STATE_RUNNING);
}

/* The device's own state, saved (STOP_COPY, back to RUNNING). */
static uint8_t *own_stream(struct conn *c, size_t *len) {
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    uint8_t *stream = read_stream(c, len);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    return stream;
}

/* test_migration_shortest_state_transition_paths: RUNNING → RESUMING goes
   through STOP, and RESUMING → RUNNING back through it (with the device's
   own state written in between). */
static void feature_multi_step_resuming(void **state) {
    CONN;
    size_t len;
    uint8_t *stream = own_stream(c, &len);
    uint32_t s;
    assert_int_equal(set_state(c, VU_STATE_RESUMING), 0);
    assert_int_equal(get_state(c, &s), 0);
    assert_int_equal(s, VU_STATE_RESUMING);
    assert_int_equal(write_stream(c, stream, len), 0);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    assert_int_equal(get_state(c, &s), 0);
    assert_int_equal(s, VU_STATE_RUNNING);
    free(stream);
}

/* test_migration_stop_copy_to_pre_copy_rejected; and RESUMING → STOP_COPY. */
static void feature_resuming_to_stop_copy_refused(void **state) {
    CONN;
    size_t len;
    uint8_t *stream = own_stream(c, &len);
    assert_int_equal(set_state(c, VU_STATE_RESUMING), 0);
    int rc = set_state(c, VU_STATE_STOP_COPY);
    assert_true(rc > 0);
    uint32_t s;
    assert_int_equal(get_state(c, &s), 0);
    assert_int_equal(s, VU_STATE_RESUMING);
    assert_int_equal(write_stream(c, stream, len), 0);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    free(stream);
}

/* test_handle_mig_data_read_too_long: more than max_data_xfer_size. */
static void mig_data_read_too_long(void **state) {
    CONN;
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    struct vu_mig_data m = { .argsz = 8 + (2u << 20), .size = 2u << 20 };
    assert_errno(req(c, VU_MIG_DATA_READ, &m, sizeof(m)), EINVAL);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
}

/* test_handle_mig_data_write_invalid_state: writing while saving. */
static void mig_data_write_while_saving(void **state) {
    CONN;
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    uint8_t w[8 + 4] = { 12, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4 };
    assert_errno(req(c, VU_MIG_DATA_WRITE, w, sizeof(w)), EINVAL);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
}

/* Reading while resuming. */
static void mig_data_read_while_resuming(void **state) {
    CONN;
    size_t len;
    uint8_t *stream = own_stream(c, &len);
    assert_int_equal(set_state(c, VU_STATE_RESUMING), 0);
    struct vu_mig_data m = { .argsz = 8 + 64, .size = 64 };
    assert_errno(req(c, VU_MIG_DATA_READ, &m, sizeof(m)), EINVAL);
    assert_int_equal(write_stream(c, stream, len), 0);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    free(stream);
}

/* A client that leaves mid-migration leaves the device RUNNING for the next. */
static void migration_ends_with_client(void **state) {
    CONN;
    skip_because(!g_one_shot, "the server serves one connection");
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    conn_close(c);
    conn_open(c);
    uint32_t s;
    assert_int_equal(get_state(c, &s), 0);
    assert_int_equal(s, VU_STATE_RUNNING);
}

/* The end of a STOP_COPY stream reads as 0 bytes, again and again. */
static void mig_data_end_of_stream(void **state) {
    CONN;
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    size_t len;
    free(read_stream(c, &len));
    for (int i = 0; i < 2; i++) {
        struct vu_mig_data m = { .argsz = 8 + 64, .size = 64 };
        struct reply r;
        assert_int_equal(request(c, VU_MIG_DATA_READ, 0, &m, sizeof(m), NULL, 0, &r), 0);
        assert_int_equal(le32_at(r.payload + 4), 0);
        assert_int_equal(r.len, 8);
        reply_free(&r);
    }
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
}

/* A second STOP_COPY starts a fresh stream from its beginning (not where
   the last one ended): the same length, the same first bytes (later bytes
   may differ: a device's state can include time). */
static void mig_data_stream_restarts(void **state) {
    CONN;
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    size_t a_len, b_len;
    uint8_t *a = read_stream(c, &a_len);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    uint8_t *b = read_stream(c, &b_len);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
    assert_int_equal(a_len, b_len);
    assert_true(a_len > 0);
    assert_memory_equal(a, b, a_len < 16 ? a_len : 16);
    free(a); free(b);
}

/* PRE_COPY, when offered, hands out data while the device runs. */
static void mig_data_pre_copy(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(feature(c, VU_FEATURE_GET | VU_FEATURE_MIGRATION, NULL, 0, 16, &r), 0);
    uint64_t flags = le64_at(r.payload + 8);
    reply_free(&r);
    skip_because(flags & VU_MIGRATION_PRE_COPY, "the device offers no PRE_COPY");
    assert_int_equal(set_state(c, VU_STATE_PRE_COPY), 0);
    struct vu_mig_data m = { .argsz = 8 + 64, .size = 64 };
    assert_int_equal(request(c, VU_MIG_DATA_READ, 0, &m, sizeof(m), NULL, 0, &r), 0);
    assert_int_equal(r.len, 8 + le32_at(r.payload + 4));
    reply_free(&r);
    assert_int_equal(set_state(c, VU_STATE_STOP_COPY), 0);
    assert_int_equal(set_state(c, VU_STATE_RUNNING), 0);
}

/* An empty resume: RESUMING then STOP with no data is refused (Protocol/README.md §19). */
static void resume_without_data_refused(void **state) {
    CONN;
    assert_int_equal(set_state(c, VU_STATE_RESUMING), 0);
    assert_errno(set_state(c, VU_STATE_STOP), EINVAL);
    assert_int_equal(req(c, VU_DEVICE_RESET, NULL, 0), 0);
}

/* Leaves the device RUNNING whatever the check did, so that a server that
   keeps migration state across clients does not hand the next check a
   stopped device. */
static int teardown_running(void **state) {
    struct conn *c = *state;
    if (c && c->fd >= 0) {
        uint32_t d[2] = { VU_STATE_RUNNING, (uint32_t)-1 };
        uint8_t buf[8 + 8];
        struct vu_device_feature f = { .argsz = 16, .flags = VU_FEATURE_SET | VU_FEATURE_MIG_DEVICE_STATE };
        memcpy(buf, &f, sizeof(f));
        memcpy(buf + sizeof(f), d, sizeof(d));
        (void)request(c, VU_DEVICE_FEATURE, 0, buf, sizeof(buf), NULL, 0, NULL);
    }
    return teardown_conn(state);
}

#undef OPTIONAL
#define OPTIONAL(f, sec, needs) { #f, f, setup_open, teardown_running, CLASS_OPTIONAL, sec, needs }

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
    OPTIONAL(feature_probe_device_state, "§14", "migration"),
    OPTIONAL(feature_migration_get_reply, "§14", "migration"),
    OPTIONAL(feature_migration_small_argsz, "§14", "migration"),
    OPTIONAL(feature_set_state_small_argsz, "§14", "migration"),
    SPEC(feature_unknown_probe, "§14"),
    SPEC(feature_no_operation, "§14"),
    OPTIONAL(feature_set_current_state, "§14", "migration"),
    OPTIONAL(feature_multi_step_resuming, "§14", "migration"),
    OPTIONAL(feature_resuming_to_stop_copy_refused, "§14", "migration"),
    OPTIONAL(mig_data_read_too_long, "§15", "migration"),
    OPTIONAL(mig_data_write_while_saving, "§15", "migration"),
    OPTIONAL(mig_data_read_while_resuming, "§15", "migration"),
    OPTIONAL(mig_data_end_of_stream, "§15", "migration"),
    OPTIONAL(mig_data_stream_restarts, "§15", "migration"),
    OPTIONAL(mig_data_pre_copy, "§15", "migration"),
    OPTIONAL(resume_without_data_refused, "§19", "strict"),
    OPTIONAL(migration_ends_with_client, "§16", "migration"),
};
const size_t migration_checks_count = COUNT_OF(migration_checks);
