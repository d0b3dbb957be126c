/* VERSION negotiation: Protocol/README.md §3; spec "Version". */
#include "suite.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *qemu_json =
    "{\"capabilities\": {\"pgsizes\": 4096, \"max_msg_fds\": 16, \"max_dma_maps\": 65535, "
    "\"max_data_xfer_size\": 1048576, \"migration\": {\"max_bitmap_size\": 268435456, \"pgsize\": 4096}, "
    "\"write_multiple\": true}}";

/* §3: the reply is 0.0 (≤ proposed), a NUL-terminated JSON object small
   enough for QEMU's receive buffer (the 214-byte request). */
static void version_reply_fits_qemu(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, qemu_json, &r), 0);
    assert_true(r.len >= 6);
    assert_int_equal(le32_at(r.payload) & 0xffff, 0);
    assert_int_equal(le32_at(r.payload) >> 16, 0);
    assert_int_equal(r.payload[r.len - 1], 0);
    assert_true(r.hdr.msg_size <= 214);
    json_object *doc = json_tokener_parse((const char *)r.payload + 4);
    assert_non_null(doc);
    assert_true(json_object_is_type(doc, json_type_object));
    json_object_put(doc);
    reply_free(&r);
    assert_alive(c);
}

/* §3: the server's limits are within what the client can take. */
static void version_capabilities_limited(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, "{\"capabilities\":{\"max_dma_maps\":5,\"pgsizes\":12288}}", &r), 0);
    json_object *doc = json_tokener_parse((const char *)r.payload + 4), *caps, *v;
    assert_non_null(doc);
    assert_true(json_object_object_get_ex(doc, "capabilities", &caps));
    if (json_object_object_get_ex(caps, "max_dma_maps", &v)) assert_true(json_object_get_int64(v) <= 5);
    if (json_object_object_get_ex(caps, "pgsizes", &v)) assert_int_equal(json_object_get_int64(v) & ~12288LL, 0);
    if (json_object_object_get_ex(caps, "max_msg_fds", &v)) assert_true(json_object_get_int64(v) >= 1);
    if (json_object_object_get_ex(caps, "max_data_xfer_size", &v)) assert_true(json_object_get_int64(v) >= 4096);
    /* The client offered neither: the reply must not claim them. */
    assert_false(json_object_object_get_ex(caps, "write_multiple", &v) && json_object_get_boolean(v));
    assert_false(json_object_object_get_ex(caps, "migration", &v));
    json_object_put(doc);
    reply_free(&r);
}

/* §3: a VERSION with no JSON uses the defaults. */
static void version_without_json(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, NULL, NULL), 0);
    assert_alive(c);
}

static void version_empty_object(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, "{}", NULL), 0);
    assert_alive(c);
}

/* §3: unknown keys are ignored. */
static void version_unknown_keys_ignored(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, "{\"capabilities\":{\"future_thing\":[1,{\"a\":null}]},\"x\":1}", NULL), 0);
    assert_alive(c);
}

/* §3: a later minor is answered with the server's own (≤ proposed). */
static void version_later_minor(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 7, "{}", &r), 0);
    assert_true((le32_at(r.payload) >> 16) <= 7);
    reply_free(&r);
}

/* The error cases. The spec lets a server refuse a VERSION it cannot
   accept by an error reply or by closing the connection; it must not
   accept it. Under --strict (Protocol/README.md §3, §16) it answers the
   documented errno, keeps the connection, and a good VERSION then succeeds. */
static void expect_version_error(struct conn *c, uint16_t major, const void *payload, size_t len, int e) {
    (void)major;
    int rc = request(c, VU_VERSION, 0, payload, len, NULL, 0, NULL);
    if (!g_strict) {
        if (rc == 0) fail_msg("the server accepted a VERSION it should refuse (with an error reply, or by closing)");
        if (rc == RECV_TIMEOUT) fail_msg("the server neither answered nor closed the connection");
        return;
    }
    assert_errno(rc, e);
    assert_int_equal(version_with(c, 0, 0, qemu_json, NULL), 0);
    assert_alive(c);
}

static void json_payload(const char *json, uint16_t major, uint8_t **out, size_t *len) {
    size_t jl = strlen(json) + 1;
    *out = malloc(4 + jl);
    memcpy(*out, &major, 2);
    memset(*out + 2, 0, 2);
    memcpy(*out + 4, json, jl);
    *len = 4 + jl;
}

static void version_bad_major(void **state) {
    CONN; uint8_t *p; size_t n;
    json_payload("{}", 1, &p, &n);
    expect_version_error(c, 1, p, n, ENOTSUP);
    free(p);
}

static void version_short_payload(void **state) {
    CONN; uint8_t p[2] = { 0 };
    expect_version_error(c, 0, p, sizeof(p), EINVAL);
}

static void version_not_nul_terminated(void **state) {
    CONN; uint8_t p[6] = { 0, 0, 0, 0, '{', '}' };
    expect_version_error(c, 0, p, sizeof(p), EINVAL);
}

static void version_malformed_json(void **state) {
    CONN; uint8_t *p; size_t n;
    json_payload("{\"capabilities\":", 0, &p, &n);
    expect_version_error(c, 0, p, n, EINVAL);
    free(p);
}

static void version_json_not_object(void **state) {
    CONN; uint8_t *p; size_t n;
    json_payload("[1,2]", 0, &p, &n);
    expect_version_error(c, 0, p, n, EINVAL);
    free(p);
}

static void version_capabilities_not_object(void **state) {
    CONN; uint8_t *p; size_t n;
    json_payload("{\"capabilities\":true}", 0, &p, &n);
    expect_version_error(c, 0, p, n, EINVAL);
    free(p);
}

static void version_bad_max_msg_fds(void **state) {
    CONN; uint8_t *p; size_t n;
    json_payload("{\"capabilities\":{\"max_msg_fds\":-3}}", 0, &p, &n);
    expect_version_error(c, 0, p, n, EINVAL);
    free(p);
}

static void version_migration_not_object(void **state) {
    CONN; uint8_t *p; size_t n;
    json_payload("{\"capabilities\":{\"migration\":4096}}", 0, &p, &n);
    expect_version_error(c, 0, p, n, EINVAL);
    free(p);
}

/* §3: JSON above VU_MAX_VERSION_JSON is E2BIG. */
static void version_oversized_json(void **state) {
    CONN;
    size_t n = VU_MAX_VERSION_JSON + 100;
    char *json = malloc(n + 1);
    memset(json, ' ', n);
    json[0] = '{'; json[n - 1] = '}'; json[n] = 0;
    uint8_t *p; size_t len;
    json_payload(json, 0, &p, &len);
    expect_version_error(c, 0, p, len, E2BIG);
    free(p);
    free(json);
}

/* §3: VERSION is accepted once per connection. */
static void version_twice_refused(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, "{}", NULL), 0);
    assert_errno(version_with(c, 0, 0, "{}", NULL), EINVAL);
    assert_alive(c);
}

/* §3: "Upon establishing a connection, the client must send a
   VFIO_USER_VERSION message": any other command first is not served (an
   error reply, or the connection closed). Under --strict the connection
   stays and VERSION then succeeds. */
static void command_before_version_refused(void **state) {
    CONN;
    struct vu_device_info info = { .argsz = sizeof(info) };
    int rc = req(c, VU_DEVICE_GET_INFO, &info, sizeof(info));
    if (!g_strict) {
        if (rc == 0) fail_msg("the server answered DEVICE_GET_INFO before VERSION");
        if (rc == RECV_TIMEOUT) fail_msg("the server neither answered nor closed the connection");
        return;
    }
    assert_errno(rc, EINVAL);
    assert_errno(req(c, VU_DEVICE_RESET, NULL, 0), EINVAL);
    assert_int_equal(version_with(c, 0, 0, qemu_json, NULL), 0);
    assert_alive(c);
}

const struct check version_checks[] = {
    QEMU_RAW(version_reply_fits_qemu, "§3"),
    SPEC_RAW(version_capabilities_limited, "§3"),
    SPEC_RAW(version_without_json, "§3"),
    SPEC_RAW(version_empty_object, "§3"),
    SPEC_RAW(version_unknown_keys_ignored, "§3"),
    SPEC_RAW(version_later_minor, "§3"),
    SPEC_RAW(version_bad_major, "§3"),
    SPEC_RAW(version_short_payload, "§3"),
    SPEC_RAW(version_not_nul_terminated, "§3"),
    SPEC_RAW(version_malformed_json, "§3"),
    SPEC_RAW(version_json_not_object, "§3"),
    SPEC_RAW(version_capabilities_not_object, "§3"),
    SPEC_RAW(version_bad_max_msg_fds, "§3"),
    SPEC_RAW(version_migration_not_object, "§3"),
    OPTIONAL_RAW(version_oversized_json, "§3", "strict"),
    OPTIONAL_RAW(version_twice_refused, "§3", "strict"),
    SPEC_RAW(command_before_version_refused, "§3"),
};
const size_t version_checks_count = COUNT_OF(version_checks);
