/* Socket helpers: framing (§1, §2), fd passing, and typed requests. */
#define _GNU_SOURCE
#include "suite.h"

#include <errno.h>
#include <stdarg.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* QEMU's VERSION capabilities, as recorded from a real QEMU. */
const char *qemu_caps =
    "{\"capabilities\": {\"pgsizes\": 4096, \"max_msg_fds\": 16, \"max_dma_maps\": 65535, "
    "\"max_data_xfer_size\": 1048576, \"migration\": {\"max_bitmap_size\": 268435456, \"pgsize\": 4096}, "
    "\"write_multiple\": true}}";

uint32_t le32_at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
uint64_t le64_at(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }


int conn_open_raw(struct conn *c) { return conn_open_path(c, g_socket); }

int conn_open_path(struct conn *c, const char *path) {
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    /* The server serves one client at a time: retry while a previous
       connection is being torn down. */
    for (int i = 0; i < 200; i++) {
        if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) == 0) return 0;
        usleep(10000);
    }
    close(c->fd);
    c->fd = -1;
    return -1;
}

void conn_close(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    /* Let the server notice the close before the next check connects. */
    usleep(2000);
}

int send_bytes(struct conn *c, const void *bytes, size_t len, const int *fds, int nfds) {
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = len };
    union { char buf[CMSG_SPACE(sizeof(int) * 64)]; struct cmsghdr align; } ctl;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > 0) {
        memset(&ctl, 0, sizeof(ctl));
        m.msg_control = ctl.buf;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(h), fds, sizeof(int) * nfds);
    }
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        sent += (size_t)n;
        iov.iov_base = (char *)bytes + sent;
        iov.iov_len = len - sent;
        m.msg_control = NULL;
        m.msg_controllen = 0;
    }
    return 0;
}

int send_msg(struct conn *c, uint16_t id, uint16_t cmd, uint32_t flags, const void *payload, size_t len,
             const int *fds, int nfds) {
    size_t total = VU_HEADER_SIZE + len;
    uint8_t *buf = malloc(total);
    struct vu_header h = { .msg_id = id, .command = cmd, .msg_size = (uint32_t)total, .flags = flags };
    memcpy(buf, &h, sizeof(h));
    if (len) memcpy(buf + VU_HEADER_SIZE, payload, len);
    int rc = send_bytes(c, buf, total, fds, nfds);
    free(buf);
    return rc;
}

static int read_exact(struct conn *c, uint8_t *p, size_t len, struct reply *r, int timeout_ms) {
    size_t got = 0;
    while (got < len) {
        struct pollfd pf = { .fd = c->fd, .events = POLLIN };
        int ready = poll(&pf, 1, timeout_ms);
        if (ready == 0) return RECV_TIMEOUT;
        if (ready != 1) return -1;
        struct iovec iov = { .iov_base = p + got, .iov_len = len - got };
        union { char buf[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } ctl;
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
        ssize_t n = recvmsg(c->fd, &m, MSG_CMSG_CLOEXEC);
        if (n <= 0) return -1;
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
            if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
            int count = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
                if (r->nfds < 16) r->fds[r->nfds++] = fd; else close(fd);
            }
        }
        got += (size_t)n;
    }
    return 0;
}

static void note(const char *fmt, ...);

int recv_msg(struct conn *c, struct reply *r, int timeout_ms) {
    memset(r, 0, sizeof(*r));
    int rc = read_exact(c, (uint8_t *)&r->hdr, VU_HEADER_SIZE, r, timeout_ms);
    if (rc == RECV_TIMEOUT) note("no message from the server within %d ms", timeout_ms);
    if (rc != 0) return rc;
    if (r->hdr.msg_size < VU_HEADER_SIZE || r->hdr.msg_size > VU_MAX_MSG_SIZE + 4096) return -1;
    r->len = r->hdr.msg_size - VU_HEADER_SIZE;
    r->payload = malloc(r->len + 1);
    if (r->len && (rc = read_exact(c, r->payload, r->len, r, timeout_ms)) != 0) return rc;
    return 0;
}

void reply_free(struct reply *r) {
    free(r->payload);
    r->payload = NULL;
    for (int i = 0; i < r->nfds; i++) close(r->fds[i]);
    r->nfds = 0;
}

/* Why a request got no usable reply, said on the check's output (the
   runner shows it when the check fails). */
static void note(const char *fmt, ...) {
    if (!g_in_check) return;
    va_list ap;
    va_start(ap, fmt);
    printf("note: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

int request(struct conn *c, uint16_t cmd, uint32_t flags, const void *payload, size_t len,
            const int *fds, int nfds, struct reply *out) {
    uint16_t id = c->next_id++;
    if (send_msg(c, id, cmd, flags, payload, len, fds, nfds) != 0) {
        note("command %u: cannot send (%s)", cmd, strerror(errno));
        return -1;
    }
    struct reply r;
    int got = recv_msg(c, &r, g_timeout_ms);
    if (got != 0) {
        if (got != RECV_TIMEOUT) note("command %u: the connection ended without a reply", cmd);
        reply_free(&r);
        return got == RECV_TIMEOUT ? RECV_TIMEOUT : -1;
    }
    /* A reply must echo the id and command and be typed as a reply (§2). */
    if (r.hdr.msg_id != id || r.hdr.command != cmd || (r.hdr.flags & VU_F_TYPE_MASK) != VU_F_TYPE_REPLY) {
        note("command %u id %u: the reply says command %u id %u type %u (spec: \"echoed in the command's reply\")",
             cmd, id, r.hdr.command, r.hdr.msg_id, r.hdr.flags & VU_F_TYPE_MASK);
        reply_free(&r);
        return -1;
    }
    /* "Error ... may be zero even if the Error bit is set": still an error. */
    int rc = (r.hdr.flags & VU_F_ERROR) ? (r.hdr.error ? (int)r.hdr.error : ERROR_WITHOUT_ERRNO) : 0;
    if (rc != 0 && r.hdr.msg_size != VU_HEADER_SIZE) {
        note("command %u: an error reply of %u bytes (spec: \"the reply message must only include the reply header\")",
             cmd, r.hdr.msg_size);
        rc = -1;
    }
    if (out) *out = r; else reply_free(&r);
    return rc;
}

int req(struct conn *c, uint16_t cmd, const void *payload, size_t len) {
    return request(c, cmd, 0, payload, len, NULL, 0, NULL);
}

void assert_alive(struct conn *c) {
    struct vu_device_info info = { .argsz = sizeof(info) };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &info, sizeof(info), NULL, 0, &r), 0);
    assert_int_equal(r.len, sizeof(info));
    reply_free(&r);
}

int version_with(struct conn *c, uint16_t major, uint16_t minor, const char *json, struct reply *r) {
    size_t jl = json ? strlen(json) + 1 : 0;
    uint8_t *p = malloc(4 + jl);
    memcpy(p, &major, 2);
    memcpy(p + 2, &minor, 2);
    if (jl) memcpy(p + 4, json, jl);
    int rc = request(c, VU_VERSION, 0, p, 4 + jl, NULL, 0, r);
    free(p);
    return rc;
}

/* QEMU's capabilities plus the display-plane key (§22). */
const char *plane_caps =
    "{\"capabilities\": {\"pgsizes\": 4096, \"max_msg_fds\": 16, \"max_dma_maps\": 65535, "
    "\"max_data_xfer_size\": 1048576, \"write_multiple\": true, \"" VU_GFX_PLANE_CAPABILITY "\": {\"version\": 1}}}";

void conn_open_planes(struct conn *c, const char *path) {
    if (conn_open_path(c, path) != 0) fail_msg(NO_SERVER_MARK " at %s", path);
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, plane_caps, &r), 0);
    assert_true(r.len > 4 && r.payload[r.len - 1] == 0);
    json_object *doc = json_tokener_parse((const char *)r.payload + 4);
    assert_non_null(doc);
    json_object *caps, *key, *version;
    assert_true(json_object_object_get_ex(doc, "capabilities", &caps));
    assert_true(json_object_object_get_ex(caps, VU_GFX_PLANE_CAPABILITY, &key));
    assert_true(json_object_object_get_ex(key, "version", &version));
    assert_int_equal(json_object_get_int(version), 1);
    c->server_gfx_plane = 1;
    json_object_put(doc);
    reply_free(&r);
}

void conn_open(struct conn *c) {
    if (conn_open_raw(c) != 0) fail_msg(NO_SERVER_MARK " at %s", g_socket);
    conn_handshake(c);
}

void conn_handshake(struct conn *c) {
    struct reply r;
    assert_int_equal(version_with(c, 0, 0, qemu_caps, &r), 0);
    assert_true(r.len > 4 && r.payload[r.len - 1] == 0);
    json_object *doc = json_tokener_parse((const char *)r.payload + 4);
    assert_non_null(doc);
    json_object *caps, *v;
    c->server_max_msg_fds = 1;
    if (json_object_object_get_ex(doc, "capabilities", &caps)) {
        if (json_object_object_get_ex(caps, "write_multiple", &v)) c->server_write_multiple = json_object_get_boolean(v);
        c->server_migration = json_object_object_get_ex(caps, "migration", &v);
        if (json_object_object_get_ex(caps, "max_msg_fds", &v)) c->server_max_msg_fds = (uint32_t)json_object_get_int(v);
    }
    json_object_put(doc);
    reply_free(&r);
}

int region_read(struct conn *c, uint32_t region, uint64_t offset, uint32_t count, void *out) {
    struct vu_region_access a = { .offset = offset, .region = region, .count = count };
    struct reply r;
    int rc = request(c, VU_REGION_READ, 0, &a, sizeof(a), NULL, 0, &r);
    if (rc == 0) {
        if (r.len != sizeof(a) + count || memcmp(r.payload, &a, sizeof(a)) != 0) rc = -1;
        else if (out) memcpy(out, r.payload + sizeof(a), count);
        reply_free(&r);
    }
    return rc;
}

int region_write(struct conn *c, uint32_t region, uint64_t offset, uint32_t count, const void *data) {
    uint8_t buf[sizeof(struct vu_region_access) + 4096];
    struct vu_region_access a = { .offset = offset, .region = region, .count = count };
    if (count > 4096) return -1;
    memcpy(buf, &a, sizeof(a));
    memcpy(buf + sizeof(a), data, count);
    return req(c, VU_REGION_WRITE, buf, sizeof(a) + count);
}

int region_info(struct conn *c, uint32_t index, uint32_t argsz, struct reply *r) {
    struct vu_region_info i = { .argsz = argsz, .index = index };
    return request(c, VU_DEVICE_GET_REGION_INFO, 0, &i, sizeof(i), NULL, 0, r);
}

int set_irqs(struct conn *c, uint32_t flags, uint32_t index, uint32_t start, uint32_t count, const int *fds, int nfds) {
    struct vu_irq_set s = { .argsz = sizeof(s), .flags = flags, .index = index, .start = start, .count = count };
    return request(c, VU_DEVICE_SET_IRQS, 0, &s, sizeof(s), fds, nfds, NULL);
}

int new_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

uint64_t wait_eventfd(int fd, int timeout_ms) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, timeout_ms) != 1) return 0;
    uint64_t v = 0;
    if (read(fd, &v, 8) != 8) return 0;
    return v;
}

int dma_map(struct conn *c, uint32_t flags, uint64_t offset, uint64_t addr, uint64_t size, int fd) {
    struct vu_dma_map m = { .argsz = sizeof(m), .flags = flags, .offset = offset, .addr = addr, .size = size };
    return request(c, VU_DMA_MAP, 0, &m, sizeof(m), fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0, NULL);
}

int dma_unmap(struct conn *c, uint32_t flags, uint64_t addr, uint64_t size) {
    struct vu_dma_unmap u = { .argsz = sizeof(u), .flags = flags, .addr = addr, .size = size };
    return req(c, VU_DMA_UNMAP, &u, sizeof(u));
}

int feature(struct conn *c, uint32_t flags, const void *data, size_t len, uint32_t argsz, struct reply *r) {
    uint8_t buf[64];
    struct vu_device_feature f = { .argsz = argsz, .flags = flags };
    memcpy(buf, &f, sizeof(f));
    if (len) memcpy(buf + sizeof(f), data, len);
    return request(c, VU_DEVICE_FEATURE, 0, buf, sizeof(f) + len, NULL, 0, r);
}

int set_state(struct conn *c, uint32_t state) {
    uint32_t d[2] = { state, (uint32_t)-1 };
    return feature(c, VU_FEATURE_SET | VU_FEATURE_MIG_DEVICE_STATE, d, sizeof(d), 16, NULL);
}

int get_state(struct conn *c, uint32_t *state) {
    struct reply r;
    int rc = feature(c, VU_FEATURE_GET | VU_FEATURE_MIG_DEVICE_STATE, NULL, 0, 16, &r);
    if (rc == 0) {
        if (r.len < 12) rc = -1; else *state = le32_at(r.payload + 8);
        reply_free(&r);
    }
    return rc;
}

int reg_write(struct conn *c, const struct reg_access *a, uint64_t value) {
    return region_write(c, a->region, a->offset, a->width, &value);
}

int reg_read(struct conn *c, const struct reg_access *a, uint64_t *value) {
    *value = 0;
    return region_read(c, a->region, a->offset, a->width, value);
}
