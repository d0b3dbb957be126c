/* Display planes (§22) and the display socket (§23). The plane checks run
   when the profile says whether the device has a display ("display"); the
   display-socket checks when --display-socket is given. */
#include "suite.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int plane_setup(void **state) {
    struct conn *c = calloc(1, sizeof(*c));
    conn_open_planes(c, g_socket);
    *state = c;
    return 0;
}

static int display_setup(void **state) {
    struct conn *c = calloc(1, sizeof(*c));
    c->fd = -1;
    *state = c;
    if (g_display_socket) conn_open_planes(c, g_display_socket);
    return 0;
}

/* umdev's extension: optional for any server; the plane checks need the
   profile to say what display the device has, the display-socket ones
   --display-socket. */
#define PLANE_CHECK(f, sec, needs) { #f, f, plane_setup, teardown_conn, CLASS_OPTIONAL, sec, needs }
#define DISPLAY_CHECK(f, sec) { #f, f, display_setup, teardown_conn, CLASS_OPTIONAL, sec, "display_socket" }

static int query(struct conn *c, uint32_t argsz, size_t len, uint32_t flags, uint32_t type, struct vu_gfx_plane_info *out) {
    struct vu_gfx_plane_info in = { .argsz = argsz, .flags = flags, .drm_plane_type = type };
    struct reply r;
    int rc = request(c, VU_QUERY_GFX_PLANE, 0, &in, len, NULL, 0, &r);
    if (rc == 0) {
        if (r.len < VU_GFX_PLANE_INFO_MIN || r.len > argsz || r.nfds != 0) rc = -1;
        else if (out) { memset(out, 0, sizeof(*out)); memcpy(out, r.payload, r.len); }
        reply_free(&r);
    }
    return rc;
}

static int query_plane(struct conn *c, uint32_t flags, uint32_t type, struct vu_gfx_plane_info *out) {
    return query(c, sizeof(*out), sizeof(*out), flags, type, out);
}

static void skip_without_display_profile(void) { skip_unless(g_profile.display != 0); }
static int has_display(void) { return g_profile.display == VU_GFX_PLANE_TYPE_REGION || g_profile.display == VU_GFX_PLANE_TYPE_DMABUF; }

static void show_a_plane(struct conn *c) {
    for (int i = 0; i < g_profile.display_mode_count; i++)
        assert_int_equal(reg_write(c, &g_profile.display_mode[i], g_profile.display_mode[i].value), 0);
}

/* §22: without the capability the commands do not exist (EINVAL), and the
   server's reply does not name the key. */
static void plane_commands_need_negotiation(void **state) {
    CONN;
    struct vu_gfx_plane_info in = { .argsz = sizeof(in), .flags = VU_GFX_PLANE_TYPE_PROBE | VU_GFX_PLANE_TYPE_DMABUF };
    EXPECT_ERRNO(c, VU_QUERY_GFX_PLANE, &in, sizeof(in), EINVAL);
    uint32_t id = 1;
    EXPECT_ERRNO(c, VU_GET_GFX_DMABUF, &id, sizeof(id), EINVAL);
}

static void plane_key_only_echoed(void **state) {
    CONN;
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, "{\"capabilities\": {\"max_msg_fds\": 1}}", &r), 0);
    assert_null(strstr((const char *)r.payload + 4, VU_GFX_PLANE_CAPABILITY));
    reply_free(&r);
}

/* §22: PROBE with exactly the device's kind succeeds and echoes the request;
   every other combination is EINVAL. */
static void plane_probe_and_flag_rules(void **state) {
    CONN;
    skip_without_display_profile();
    const uint32_t P = VU_GFX_PLANE_TYPE_PROBE, D = VU_GFX_PLANE_TYPE_DMABUF, R = VU_GFX_PLANE_TYPE_REGION;
    const uint32_t all[] = { P | D, P | R, P, P | D | R, D | R, 0, D, R, 8, P | 8 };
    for (size_t i = 0; i < COUNT_OF(all); i++) {
        int ok = has_display() && (all[i] == (P | g_profile.display) || all[i] == g_profile.display);
        struct vu_gfx_plane_info out;
        int rc = query_plane(c, all[i], VU_DRM_PLANE_TYPE_PRIMARY, &out);
        if (ok) {
            assert_int_equal(rc, 0);
            assert_int_equal(out.flags, all[i]);
        } else {
            assert_errno(rc, EINVAL);
        }
    }
    assert_alive(c);
}

/* §22: argsz at least 60 and at most the payload; the reply is argsz bytes. */
static void plane_argsz_rules(void **state) {
    CONN;
    skip_unless(has_display());
    assert_errno(query(c, 59, 64, g_profile.display, 1, NULL), EINVAL);
    assert_errno(query(c, 64, 60, g_profile.display, 1, NULL), EINVAL);
    assert_errno(query(c, 56, 56, g_profile.display, 1, NULL), EINVAL);
    struct vu_gfx_plane_info in = { .argsz = 60, .flags = g_profile.display, .drm_plane_type = 1 };
    struct reply r;
    assert_int_equal(request(c, VU_QUERY_GFX_PLANE, 0, &in, 60, NULL, 0, &r), 0);
    assert_int_equal(r.len, 60);
    reply_free(&r);
    assert_alive(c);
}

/* §22: the cursor plane (which umdev's devices lack) is success with zeros. */
static void plane_disabled_is_zeros(void **state) {
    CONN;
    skip_unless(has_display());
    struct vu_gfx_plane_info p;
    assert_int_equal(query_plane(c, g_profile.display, VU_DRM_PLANE_TYPE_CURSOR, &p), 0);
    assert_int_equal(p.drm_format, 0);
    assert_int_equal(p.width, 0);
    assert_int_equal(p.height, 0);
    assert_int_equal(p.size, 0);
    assert_int_equal(p.id, 0);
}

/* §22: after the profile's mode writes the primary plane is the profile's. */
static void plane_after_mode_set(void **state) {
    CONN;
    skip_unless(has_display() && g_profile.plane_width > 0);
    show_a_plane(c);
    struct vu_gfx_plane_info p;
    assert_int_equal(query_plane(c, g_profile.display, VU_DRM_PLANE_TYPE_PRIMARY, &p), 0);
    assert_int_equal(p.drm_format, g_profile.plane_fourcc);
    assert_int_equal(p.width, (uint32_t)g_profile.plane_width);
    assert_int_equal(p.height, (uint32_t)g_profile.plane_height);
    if (g_profile.plane_stride > 0) assert_int_equal(p.stride, (uint32_t)g_profile.plane_stride);
    assert_true(p.stride >= p.width * 2);
    assert_int_equal(p.size, p.stride * p.height);
    assert_int_equal(p.drm_format_mod, 0);
    assert_int_not_equal(p.id, 0);
    if (g_profile.display == VU_GFX_PLANE_TYPE_REGION) {
        /* The region is mappable and holds the whole plane. */
        struct reply r;
        assert_int_equal(region_info(c, p.id, 4096, &r), 0);
        struct vu_region_info ri;
        memcpy(&ri, r.payload, 32);
        assert_true(ri.flags & VU_REGION_FLAG_MMAP);
        assert_true(ri.size >= p.size);
        assert_int_equal(r.nfds, 1);
        reply_free(&r);
    }
    /* Asking again changes nothing. */
    struct vu_gfx_plane_info again;
    assert_int_equal(query_plane(c, g_profile.display, VU_DRM_PLANE_TYPE_PRIMARY, &again), 0);
    assert_memory_equal(&p, &again, sizeof(p));
}

/* §22: GET_GFX_DMABUF answers a current id with one descriptor that maps the
   plane at a page-aligned offset; unknown ids are ENOENT; a region device
   has no dmabufs (ENOTTY). */
static void plane_dmabuf_descriptor(void **state) {
    CONN;
    skip_unless(has_display());
    uint32_t id = 0x7fffffff;
    if (g_profile.display == VU_GFX_PLANE_TYPE_REGION) {
        EXPECT_ERRNO(c, VU_GET_GFX_DMABUF, &id, sizeof(id), ENOTTY);
        return;
    }
    EXPECT_ERRNO(c, VU_GET_GFX_DMABUF, &id, sizeof(id), ENOENT);
    id = 0;
    EXPECT_ERRNO(c, VU_GET_GFX_DMABUF, &id, sizeof(id), ENOENT);
    EXPECT_ERRNO(c, VU_GET_GFX_DMABUF, &id, 2, EINVAL);
    skip_unless(g_profile.plane_width > 0);
    show_a_plane(c);
    struct vu_gfx_plane_info p;
    assert_int_equal(query_plane(c, VU_GFX_PLANE_TYPE_DMABUF, VU_DRM_PLANE_TYPE_PRIMARY, &p), 0);
    struct reply r;
    assert_int_equal(request(c, VU_GET_GFX_DMABUF, 0, &p.id, sizeof(p.id), NULL, 0, &r), 0);
    assert_int_equal(r.len, sizeof(struct vu_gfx_dmabuf));
    assert_int_equal(r.nfds, 1);
    struct vu_gfx_dmabuf d;
    memcpy(&d, r.payload, sizeof(d));
    assert_int_equal(d.dmabuf_id, p.id);
    assert_int_equal(d.offset % 4096, 0);
    assert_int_equal(d.size, (uint64_t)p.stride * p.height);
    void *m = mmap(NULL, d.size, PROT_READ, MAP_SHARED, r.fds[0], (off_t)d.offset);
    assert_true(m != MAP_FAILED);
    munmap(m, d.size);
    reply_free(&r);
}

/* §23: the display socket answers info and planes, and refuses with EPERM
   everything that would change the device. */
static void display_socket_answers(void **state) {
    CONN;
    skip_unless(g_display_socket != NULL);
    assert_alive(c);
    struct vu_region_info in = { .argsz = 32, .index = VU_PCI_CONFIG_REGION };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_REGION_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    reply_free(&r);
    if (has_display()) {
        struct vu_gfx_plane_info p;
        assert_int_equal(query_plane(c, VU_GFX_PLANE_TYPE_PROBE | g_profile.display, 1, &p), 0);
    }
}

static void display_socket_refuses_changes(void **state) {
    CONN;
    skip_unless(g_display_socket != NULL);
    uint8_t write[17] = { 0 };
    struct vu_region_access *w = (struct vu_region_access *)write;
    w->region = VU_PCI_CONFIG_REGION; w->offset = 0x3c; w->count = 1;
    EXPECT_ERRNO(c, VU_REGION_WRITE, write, sizeof(write), EPERM);
    struct vu_region_access rd = { .region = VU_PCI_CONFIG_REGION, .offset = 0, .count = 4 };
    EXPECT_ERRNO(c, VU_REGION_READ, &rd, sizeof(rd), EPERM);
    struct vu_irq_set s = { .argsz = sizeof(s), .flags = VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_TRIGGER, .index = 0 };
    EXPECT_ERRNO(c, VU_DEVICE_SET_IRQS, &s, sizeof(s), EPERM);
    struct vu_dma_map m = { .argsz = sizeof(m), .flags = 3, .addr = 0x100000, .size = 4096 };
    EXPECT_ERRNO(c, VU_DMA_MAP, &m, sizeof(m), EPERM);
    struct vu_dma_unmap u = { .argsz = sizeof(u), .addr = 0x100000, .size = 4096 };
    EXPECT_ERRNO(c, VU_DMA_UNMAP, &u, sizeof(u), EPERM);
    EXPECT_ERRNO(c, VU_DEVICE_RESET, NULL, 0, EPERM);
    uint32_t feature[4] = { 16, VU_FEATURE_GET | VU_FEATURE_MIG_DEVICE_STATE, 0, 0 };
    EXPECT_ERRNO(c, VU_DEVICE_FEATURE, feature, sizeof(feature), EPERM);
    uint32_t mig[2] = { 8 + 64, 64 };
    EXPECT_ERRNO(c, VU_MIG_DATA_READ, mig, sizeof(mig), EPERM);
}

/* §23: a viewer sees the plane the device socket sees. */
static void display_socket_plane_matches(void **state) {
    CONN;
    skip_unless(g_display_socket != NULL && has_display() && g_profile.plane_width > 0);
    struct conn vmm;
    conn_open_planes(&vmm, g_socket);
    show_a_plane(&vmm);
    struct vu_gfx_plane_info a, b;
    assert_int_equal(query_plane(&vmm, g_profile.display, 1, &a), 0);
    assert_int_equal(query_plane(c, g_profile.display, 1, &b), 0);
    assert_memory_equal(&a, &b, sizeof(a));
    conn_close(&vmm);
}

const struct check plane_checks[] = {
    SPEC(plane_commands_need_negotiation, "§22"),
    SPEC_RAW(plane_key_only_echoed, "§22"),
    PLANE_CHECK(plane_probe_and_flag_rules, "§22", "display_known"),
    PLANE_CHECK(plane_argsz_rules, "§22", "display"),
    PLANE_CHECK(plane_disabled_is_zeros, "§22", "display"),
    PLANE_CHECK(plane_after_mode_set, "§22", "display_mode"),
    PLANE_CHECK(plane_dmabuf_descriptor, "§22", "display"),
    DISPLAY_CHECK(display_socket_answers, "§23"),
    DISPLAY_CHECK(display_socket_refuses_changes, "§23"),
    DISPLAY_CHECK(display_socket_plane_matches, "§23"),
};
const size_t plane_checks_count = COUNT_OF(plane_checks);
