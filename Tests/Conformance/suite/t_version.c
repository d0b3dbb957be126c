/* VERSION negotiation: Protocol/README.md §3; spec "Version". */
#include "suite.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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


/* ---- more of libvfio-user's test_negotiate.py, and the spec's reply rules ---- */

static void bad_json(void **state, const char *json) {
    CONN; uint8_t *p; size_t n;
    json_payload(json, 0, &p, &n);
    expect_version_error(c, 0, p, n, EINVAL);
    free(p);
}

/* test_invalid_json_missing_closing_quote */
static void version_json_lone_quote(void **state) { bad_json(state, "\""); }
/* test_invalid_json_missing_closing_brace */
static void version_json_open_brace(void **state) { bad_json(state, "{"); }
/* test_invalid_json_bad_capabilities_object ("23") */
static void version_capabilities_string(void **state) { bad_json(state, "{ \"capabilities\": \"23\" }"); }
static void version_capabilities_null(void **state) { bad_json(state, "{ \"capabilities\": null }"); }
/* test_invalid_json_bad_max_fds */
static void version_max_msg_fds_string(void **state) { bad_json(state, "{ \"capabilities\": { \"max_msg_fds\": \"foo\" } }"); }
/* test_invalid_json_bad_migration_object ("23") */
static void version_migration_string(void **state) { bad_json(state, "{ \"capabilities\": { \"migration\": \"23\" } }"); }
/* test_invalid_json_bad_pgsize */
static void version_migration_pgsize_string(void **state) {
    bad_json(state, "{ \"capabilities\": { \"migration\": { \"pgsize\": \"foo\" } } }");
}
/* test_invalid_json_bad_pgsize2: a page size that is no page size */
static void version_migration_pgsize_odd(void **state) {
    bad_json(state, "{ \"capabilities\": { \"migration\": { \"pgsize\": 4095 } } }");
}
/* A type the spec's table does not allow. */
static void version_max_data_xfer_size_string(void **state) {
    bad_json(state, "{ \"capabilities\": { \"max_data_xfer_size\": \"big\" } }");
}
static void version_pgsizes_string(void **state) { bad_json(state, "{ \"capabilities\": { \"pgsizes\": \"4k\" } }"); }
static void version_write_multiple_number(void **state) { bad_json(state, "{ \"capabilities\": { \"write_multiple\": 1 } }"); }
/* test_invalid_json_bad_max_fds3: beyond what any server takes (umdev: 1024). */
static void version_max_msg_fds_huge(void **state) {
    bad_json(state, "{ \"capabilities\": { \"max_msg_fds\": 1000000 } }");
}

/* test_short_write: a header-only VERSION. */
static void version_header_only(void **state) {
    CONN;
    expect_version_error(c, 0, NULL, 0, EINVAL);
}

/* A VERSION carrying a descriptor: VERSION takes none. */
static void version_with_descriptor(void **state) {
    CONN;
    uint8_t p[7] = { 0, 0, 0, 0, '{', '}', 0 };
    int fd = new_eventfd();
    int rc = request(c, VU_VERSION, 0, p, sizeof(p), &fd, 1, NULL);
    close(fd);
    if (!g_strict) {
        if (rc == 0) fail_msg("the server accepted a VERSION carrying a descriptor");
        if (rc == RECV_TIMEOUT) fail_msg("the server neither answered nor closed the connection");
        return;
    }
    assert_errno(rc, EINVAL);
    assert_int_equal(version_with(c, 0, 0, qemu_json, NULL), 0);
    assert_alive(c);
}

/* The reply is the reply to this VERSION: same id and command, typed as a
   reply, no descriptors, and a payload of major, minor and NUL-ended JSON. */
static void version_reply_header(void **state) {
    CONN;
    uint8_t p[4 + 3] = { 0, 0, 0, 0, '{', '}', 0 };
    assert_int_equal(send_msg(c, 0xfffe, VU_VERSION, 0, p, sizeof(p), NULL, 0), 0);
    struct reply r;
    assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
    assert_int_equal(r.hdr.msg_id, 0xfffe);
    assert_int_equal(r.hdr.command, VU_VERSION);
    assert_int_equal(r.hdr.flags & VU_F_TYPE_MASK, VU_F_TYPE_REPLY);
    assert_int_equal(r.hdr.flags & VU_F_ERROR, 0);
    assert_int_equal(r.hdr.msg_size, VU_HEADER_SIZE + r.len);
    assert_int_equal(r.nfds, 0);
    assert_true(r.len >= 4);
    if (r.len > 4) assert_int_equal(r.payload[r.len - 1], 0);
    reply_free(&r);
}

/* "The major version in the reply must be the same as proposed." */
static void version_reply_major_same(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 3, NULL, &r), 0);
    assert_int_equal(le32_at(r.payload) & 0xffff, 0);
    assert_true((le32_at(r.payload) >> 16) <= 3);
    reply_free(&r);
}

/* The reply's capabilities have the types the spec's table gives them. */
static void version_reply_capability_types(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, qemu_json, &r), 0);
    json_object *doc = json_tokener_parse((const char *)r.payload + 4), *caps, *v;
    assert_non_null(doc);
    assert_true(json_object_is_type(doc, json_type_object));
    if (json_object_object_get_ex(doc, "capabilities", &caps)) {
        assert_true(json_object_is_type(caps, json_type_object));
        if (json_object_object_get_ex(caps, "max_msg_fds", &v)) assert_true(json_object_is_type(v, json_type_int) && json_object_get_int64(v) >= 1);
        if (json_object_object_get_ex(caps, "max_data_xfer_size", &v)) assert_true(json_object_is_type(v, json_type_int) && json_object_get_int64(v) > 0);
        if (json_object_object_get_ex(caps, "pgsizes", &v)) assert_true(json_object_is_type(v, json_type_int) && (json_object_get_int64(v) & 4096));
        if (json_object_object_get_ex(caps, "max_dma_maps", &v)) assert_true(json_object_is_type(v, json_type_int) && json_object_get_int64(v) >= 1);
        if (json_object_object_get_ex(caps, "write_multiple", &v)) assert_true(json_object_is_type(v, json_type_boolean));
        if (json_object_object_get_ex(caps, "migration", &v)) {
            assert_true(json_object_is_type(v, json_type_object));
            json_object *m;
            if (json_object_object_get_ex(v, "pgsize", &m)) assert_true(json_object_is_type(m, json_type_int));
            if (json_object_object_get_ex(v, "max_bitmap_size", &m)) assert_true(json_object_is_type(m, json_type_int));
        }
    }
    json_object_put(doc);
    reply_free(&r);
}

/* "The capability list must be a subset of those proposed": the reply to
   `proposal` (NULL: a VERSION without JSON) names no capability the
   proposal did not. The proposed keys are read from the proposal itself. */
static void expect_reply_subset(struct conn *c, const char *proposal) {
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, proposal, &r), 0);
    json_object *asked = proposal ? json_tokener_parse(proposal) : NULL, *asked_caps = NULL;
    if (proposal) assert_non_null(asked);
    if (asked) json_object_object_get_ex(asked, "capabilities", &asked_caps);
    /* The spec makes the JSON optional: a bare 0.0 names nothing. */
    json_object *doc = r.len > 4 ? json_tokener_parse((const char *)r.payload + 4) : json_object_new_object(), *caps;
    assert_non_null(doc);
    if (json_object_object_get_ex(doc, "capabilities", &caps) && json_object_is_type(caps, json_type_object)) {
        json_object_object_foreach(caps, key, val) {
            (void)val;
            json_object *v;
            if (!asked_caps || !json_object_object_get_ex(asked_caps, key, &v))
                fail_msg("the reply names \"%s\", which the client did not propose (proposal: %s)", key,
                         proposal ? proposal : "no JSON");
        }
    }
    json_object_put(doc);
    if (asked) json_object_put(asked);
    reply_free(&r);
    assert_alive(c);
}

/* To QEMU's proposal (every key it sends). */
static void version_reply_subset_of_qemu(void **state) {
    CONN;
    expect_reply_subset(c, qemu_json);
}

/* To a minimal proposal: max_msg_fds alone gets no pgsizes, max_dma_maps,
   migration or write_multiple back. */
static void version_reply_subset_minimal(void **state) {
    CONN;
    expect_reply_subset(c, "{\"capabilities\":{\"max_msg_fds\":16}}");
}

/* To the two limits libvfio-user's own client proposes. */
static void version_reply_subset_two_limits(void **state) {
    CONN;
    expect_reply_subset(c, "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}");
}

/* To an empty capabilities object and to no JSON at all: nothing. */
static void version_reply_subset_empty(void **state) {
    CONN;
    expect_reply_subset(c, "{\"capabilities\":{}}");
}

static void version_reply_subset_no_json(void **state) {
    CONN;
    expect_reply_subset(c, NULL);
}

/* Without write_multiple proposed, the reply does not offer it. */
static void version_no_write_multiple_unless_proposed(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, "{\"capabilities\":{\"max_msg_fds\":8}}", &r), 0);
    json_object *doc = json_tokener_parse((const char *)r.payload + 4), *caps, *v;
    assert_non_null(doc);
    if (json_object_object_get_ex(doc, "capabilities", &caps) && json_object_object_get_ex(caps, "write_multiple", &v))
        assert_false(json_object_get_boolean(v));
    json_object_put(doc);
    reply_free(&r);
}

/* The server's max_msg_fds limits what it sends: a region info reply
   carries at most one descriptor even when the client takes 16. */
static void version_max_msg_fds_one(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, "{\"capabilities\":{\"max_msg_fds\":1}}", NULL), 0);
    struct reply r;
    assert_int_equal(region_info(c, VU_PCI_CONFIG_REGION, 32, &r), 0);
    assert_true(r.nfds <= 1);
    reply_free(&r);
    assert_alive(c);
}

/* A minor version of 0xffff is answered with the server's own. */
static void version_huge_minor(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 0xffff, "{}", &r), 0);
    assert_int_equal(le32_at(r.payload) & 0xffff, 0);
    reply_free(&r);
}

/* The JSON's outer object may carry other members; only capabilities counts. */
static void version_other_members_ignored(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, "{\"comment\":\"x\",\"capabilities\":{}}", NULL), 0);
    assert_alive(c);
}

/* Whitespace and key order do not matter. */
static void version_json_whitespace(void **state) {
    CONN;
    assert_int_equal(version_with(c, 0, 0, " \n{ \"capabilities\" :\t{ \"max_msg_fds\" : 4 } }\n ", NULL), 0);
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
    SPEC_RAW(version_json_lone_quote, "§3"),
    SPEC_RAW(version_json_open_brace, "§3"),
    SPEC_RAW(version_capabilities_string, "§3"),
    SPEC_RAW(version_capabilities_null, "§3"),
    SPEC_RAW(version_max_msg_fds_string, "§3"),
    SPEC_RAW(version_migration_string, "§3"),
    SPEC_RAW(version_migration_pgsize_string, "§3"),
    OPTIONAL_RAW(version_migration_pgsize_odd, "§3", "strict"),
    SPEC_RAW(version_max_data_xfer_size_string, "§3"),
    SPEC_RAW(version_pgsizes_string, "§3"),
    SPEC_RAW(version_write_multiple_number, "§3"),
    OPTIONAL_RAW(version_max_msg_fds_huge, "§3", "strict"),
    SPEC_RAW(version_header_only, "§3"),
    SPEC_RAW(version_with_descriptor, "§3"),
    SPEC_RAW(version_reply_header, "§2"),
    SPEC_RAW(version_reply_major_same, "§3"),
    SPEC_RAW(version_reply_capability_types, "§3"),
    SPEC_RAW(version_reply_subset_of_qemu, "§3"),
    SPEC_RAW(version_reply_subset_minimal, "§3"),
    SPEC_RAW(version_reply_subset_two_limits, "§3"),
    SPEC_RAW(version_reply_subset_empty, "§3"),
    SPEC_RAW(version_reply_subset_no_json, "§3"),
    SPEC_RAW(version_no_write_multiple_unless_proposed, "§3"),
    SPEC_RAW(version_max_msg_fds_one, "§3"),
    SPEC_RAW(version_huge_minor, "§3"),
    SPEC_RAW(version_other_members_ignored, "§3"),
    SPEC_RAW(version_json_whitespace, "§3"),
};
const size_t version_checks_count = COUNT_OF(version_checks);
