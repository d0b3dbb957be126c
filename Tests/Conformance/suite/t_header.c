/* Framing and header rules: Protocol/README.md §1, §2, §16. */
#include "suite.h"
#include <poll.h>
#include <sys/socket.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

static const struct vu_device_info info_req = { .argsz = 16 };

/* Sends `n` (at most 8) DEVICE_GET_INFO requests in a single write, with ids
   first_id, first_id + id_step, ... */
static void send_info_batch(struct conn *c, int n, uint16_t first_id, uint16_t id_step) {
    uint8_t batch[8 * 32];
    assert_true(n <= 8);
    for (int i = 0; i < n; i++) {
        struct vu_header h = { .msg_id = (uint16_t)(first_id + i * id_step), .command = VU_DEVICE_GET_INFO, .msg_size = 32 };
        memcpy(batch + 32 * i, &h, 16);
        memcpy(batch + 32 * i + 16, &info_req, 16);
    }
    assert_int_equal(send_bytes(c, batch, (size_t)n * 32, NULL, 0), 0);
}

/* §2: an unknown command number is EINVAL. */
static void unknown_command(void **state) {
    CONN;
    EXPECT_ERRNO(c, 99, &info_req, sizeof(info_req), EINVAL);
    EXPECT_ERRNO(c, 0, &info_req, sizeof(info_req), EINVAL);
}

/* §2: a message typed as a reply is not answered; the next request is. */
static void reply_typed_message_ignored(void **state) {
    CONN;
    assert_int_equal(send_msg(c, 500, VU_DEVICE_GET_INFO, VU_F_TYPE_REPLY, &info_req, sizeof(info_req), NULL, 0), 0);
    assert_alive(c); /* request() checks the next reply is for the new id */
}

/* §2: unknown flag bits and message types are refused. */
static void unknown_header_flags(void **state) {
    CONN;
    assert_errno(request(c, VU_DEVICE_GET_INFO, 0x40, &info_req, sizeof(info_req), NULL, 0, NULL), EINVAL);
    assert_alive(c);
    assert_errno(request(c, VU_DEVICE_GET_INFO, 0x02, &info_req, sizeof(info_req), NULL, 0, NULL), EINVAL);
    assert_alive(c);
}

/* §2: the error field is reserved (0) in commands. */
static void error_field_in_command(void **state) {
    CONN;
    uint8_t m[32];
    struct vu_header h = { .msg_id = 77, .command = VU_DEVICE_GET_INFO, .msg_size = 32, .flags = 0, .error = 5 };
    memcpy(m, &h, 16);
    memcpy(m + 16, &info_req, 16);
    assert_int_equal(send_bytes(c, m, sizeof(m), NULL, 0), 0);
    struct reply r;
    assert_int_equal(recv_msg(c, &r, 5000), 0);
    assert_true(r.hdr.flags & VU_F_ERROR);
    assert_errno(r.hdr.error, EINVAL);
    reply_free(&r);
    assert_alive(c);
}

/* §12: DMA_READ/DMA_WRITE only go server → client. */
static void dma_read_from_client_refused(void **state) {
    CONN;
    struct vu_dma_rw d = { .addr = 0, .count = 4 };
    EXPECT_ERRNO(c, VU_DMA_READ, &d, sizeof(d), EINVAL);
    EXPECT_ERRNO(c, VU_DMA_WRITE, &d, sizeof(d), EINVAL);
}

/* §2: legacy DIRTY_PAGES (14) is not supported. */
static void dirty_pages_unsupported(void **state) {
    CONN;
    uint32_t argsz = 16;
    EXPECT_ERRNO(c, VU_DIRTY_PAGES, &argsz, sizeof(argsz), ENOTSUP);
}

/* §16: a command that needs a payload, sent header-only. */
static void header_only_refused(void **state) {
    CONN;
    EXPECT_ERRNO(c, VU_DEVICE_GET_INFO, NULL, 0, EINVAL);
    EXPECT_ERRNO(c, VU_REGION_READ, NULL, 0, EINVAL);
}

/* §1: msg_size below the header cannot be framed: the server refuses it
   (an error reply, or closing this connection; --strict: closing) and goes
   on serving: a new connection is served. */
static void undersized_msg_size_closes_connection(void **state) {
    CONN;
    struct vu_header h = { .msg_id = 1, .command = VU_DEVICE_GET_INFO, .msg_size = 8 };
    assert_int_equal(send_bytes(c, &h, sizeof(h), NULL, 0), 0);
    struct reply r;
    int got = recv_msg(c, &r, g_timeout_ms);
    if (got == 0) {
        if (g_strict) fail_msg("the server answered a message it cannot frame (msg_size 8)");
        if (!(r.hdr.flags & VU_F_ERROR)) fail_msg("the server answered msg_size 8 with a success reply");
    }
    reply_free(&r);
    if (g_one_shot) return;   /* it serves one connection anyway */
    conn_close(c);
    conn_open(c);
    assert_alive(c);
}

/* §1, §3: a message above max_data_xfer_size is refused: an error reply or
   the connection closed, not silence. --strict: E2BIG, its bytes skipped,
   and the connection goes on. */
static void oversized_message_refused(void **state) {
    CONN;
    size_t n = VU_MAX_MSG_SIZE + 256;
    uint8_t *p = calloc(1, n);
    struct vu_region_access a = { .offset = 0, .region = VU_PCI_CONFIG_REGION, .count = (uint32_t)(n - sizeof(a)) };
    memcpy(p, &a, sizeof(a));
    if (g_strict) {
        EXPECT_ERRNO(c, VU_REGION_WRITE, p, n, E2BIG);
    } else {
        uint16_t id = c->next_id++;
        (void)send_msg(c, id, VU_REGION_WRITE, 0, p, n, NULL, 0); /* the server may close mid-way */
        struct reply r;
        int got = recv_msg(c, &r, g_timeout_ms);
        if (got == 0 && !(r.hdr.flags & VU_F_ERROR)) fail_msg("the server accepted a %zu-byte REGION_WRITE", n);
        if (got != 0) {
            /* No reply: it must have closed the connection, not be waiting. */
            char b;
            struct pollfd pf = { .fd = c->fd, .events = POLLIN };
            if (poll(&pf, 1, 0) != 1 || recv(c->fd, &b, 1, MSG_DONTWAIT) > 0)
                fail_msg("no reply within %d ms and the connection is still open", g_timeout_ms);
        }
        reply_free(&r);
    }
    free(p);
}

/* §1: descriptors on a command that takes none: EINVAL (and closed). */
static void fds_on_command_without_fds(void **state) {
    CONN;
    int fd = new_eventfd();
    assert_errno(request(c, VU_DEVICE_GET_INFO, 0, &info_req, sizeof(info_req), &fd, 1, NULL), EINVAL);
    assert_alive(c);
    close(fd);
}

/* §1, §3: more descriptors than max_msg_fds: EINVAL. */
static void too_many_fds(void **state) {
    CONN;
    int fds[12];
    for (int i = 0; i < 12; i++) fds[i] = new_eventfd();
    struct vu_irq_set s = { .argsz = sizeof(s), .flags = VU_IRQ_SET_DATA_EVENTFD | VU_IRQ_SET_ACTION_TRIGGER,
                            .index = VU_PCI_MSIX_IRQ, .start = 0, .count = 12 };
    assert_errno(request(c, VU_DEVICE_SET_IRQS, 0, &s, sizeof(s), fds, 12, NULL), EINVAL);
    assert_alive(c);
    for (int i = 0; i < 12; i++) close(fds[i]);
}

/* §1: a message split into single bytes is reassembled. */
static void partial_message_reassembled(void **state) {
    CONN;
    uint8_t m[32];
    struct vu_header h = { .msg_id = 321, .command = VU_DEVICE_GET_INFO, .msg_size = 32 };
    memcpy(m, &h, 16);
    memcpy(m + 16, &info_req, 16);
    for (size_t i = 0; i < sizeof(m); i++) {
        assert_int_equal(send_bytes(c, m + i, 1, NULL, 0), 0);
        usleep(100);   /* real time is the point: let each byte be a read of its own */
    }
    struct reply r;
    assert_int_equal(recv_msg(c, &r, 5000), 0);
    assert_int_equal(r.hdr.msg_id, 321);
    assert_false(r.hdr.flags & VU_F_ERROR);
    reply_free(&r);
}

/* §1: pipelined requests are answered in order. */
static void pipelined_requests_in_order(void **state) {
    CONN;
    send_info_batch(c, 8, 1000, 1);
    for (int i = 0; i < 8; i++) {
        struct reply r;
        assert_int_equal(recv_msg(c, &r, 5000), 0);
        assert_int_equal(r.hdr.msg_id, 1000 + i);
        reply_free(&r);
    }
}


/* ---- more framing: libvfio-user's test_request_errors.py, and the spec's header rules ---- */

/* "If an error occurs, the reply message must only include the reply
   header", with the Error flag, the command's id and command. */
static void error_reply_is_header_only(void **state) {
    CONN;
    struct vu_region_info in = { .argsz = 32, .index = 1000 };
    assert_int_equal(send_msg(c, 4242, VU_DEVICE_GET_REGION_INFO, 0, &in, sizeof(in), NULL, 0), 0);
    struct reply r;
    assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
    assert_int_equal(r.hdr.msg_id, 4242);
    assert_int_equal(r.hdr.command, VU_DEVICE_GET_REGION_INFO);
    assert_int_equal(r.hdr.flags & VU_F_TYPE_MASK, VU_F_TYPE_REPLY);
    assert_true(r.hdr.flags & VU_F_ERROR);
    assert_int_equal(r.hdr.msg_size, VU_HEADER_SIZE);
    assert_int_equal(r.nfds, 0);
    reply_free(&r);
    assert_alive(c);
}

/* "Message ID ... is echoed in the command's reply": at the ends of its range. */
static void reply_echoes_extreme_ids(void **state) {
    CONN;
    static const uint16_t ids[] = { 0, 1, 0x7fff, 0x8000, 0xffff };
    for (size_t i = 0; i < COUNT_OF(ids); i++) {
        assert_int_equal(send_msg(c, ids[i], VU_DEVICE_GET_INFO, 0, &info_req, sizeof(info_req), NULL, 0), 0);
        struct reply r;
        assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
        assert_int_equal(r.hdr.msg_id, ids[i]);
        assert_int_equal(r.hdr.command, VU_DEVICE_GET_INFO);
        reply_free(&r);
    }
}

/* "Message IDs ... can be re-used (even concurrently) and the receiver must
   not make any assumptions about their uniqueness." */
static void reused_ids_all_answered(void **state) {
    CONN;
    send_info_batch(c, 4, 9, 0);
    for (int i = 0; i < 4; i++) {
        struct reply r;
        assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
        assert_int_equal(r.hdr.msg_id, 9);
        assert_int_equal(r.hdr.flags & VU_F_ERROR, 0);
        reply_free(&r);
    }
}

/* "No_reply in a command message indicates that no reply is needed": a
   GET_INFO with it is not answered; the next command is. */
static void no_reply_flag_suppresses_reply(void **state) {
    CONN;
    assert_int_equal(send_msg(c, 700, VU_DEVICE_GET_INFO, VU_F_NO_REPLY, &info_req, sizeof(info_req), NULL, 0), 0);
    assert_int_equal(send_msg(c, 701, VU_DEVICE_GET_INFO, 0, &info_req, sizeof(info_req), NULL, 0), 0);
    struct reply r;
    assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
    assert_int_equal(r.hdr.msg_id, 701);
    reply_free(&r);
}

/* Commands of every kind in one burst are answered in order (QEMU
   pipelines DMA maps and reads). */
static void pipelined_mixed_commands_in_order(void **state) {
    CONN;
    struct vu_region_info ri = { .argsz = 32, .index = VU_PCI_CONFIG_REGION };
    struct vu_irq_info ii = { .argsz = 16, .index = VU_PCI_ERR_IRQ };
    struct vu_region_access ra = { .offset = 0, .region = VU_PCI_CONFIG_REGION, .count = 4 };
    struct vu_region_info bad = { .argsz = 32, .index = 1000 };
    struct { uint16_t cmd; const void *p; size_t n; } m[] = {
        { VU_DEVICE_GET_INFO, &info_req, sizeof(info_req) }, { VU_DEVICE_GET_REGION_INFO, &ri, sizeof(ri) },
        { VU_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii) }, { VU_REGION_READ, &ra, sizeof(ra) },
        { VU_DEVICE_GET_REGION_INFO, &bad, sizeof(bad) }, { VU_DEVICE_GET_INFO, &info_req, sizeof(info_req) },
    };
    for (size_t i = 0; i < COUNT_OF(m); i++)
        assert_int_equal(send_msg(c, (uint16_t)(2000 + i), m[i].cmd, 0, m[i].p, m[i].n, NULL, 0), 0);
    for (size_t i = 0; i < COUNT_OF(m); i++) {
        struct reply r;
        assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
        assert_int_equal(r.hdr.msg_id, 2000 + i);
        assert_int_equal(r.hdr.command, m[i].cmd);
        assert_int_equal(!!(r.hdr.flags & VU_F_ERROR), i == 4);
        reply_free(&r);
    }
}

/* Eight DMA_MAPs and their UNMAPs in one burst, as QEMU sends them at boot. */
static void pipelined_dma_maps(void **state) {
    CONN;
    for (int i = 0; i < 8; i++) {
        struct vu_dma_map mm = { .argsz = sizeof(mm), .flags = VU_DMA_READ_FLAG | VU_DMA_WRITE_FLAG,
                                 .addr = 0x40000000ull + (uint64_t)i * 0x10000, .size = 0x10000 };
        assert_int_equal(send_msg(c, (uint16_t)(3000 + i), VU_DMA_MAP, 0, &mm, sizeof(mm), NULL, 0), 0);
    }
    for (int i = 0; i < 8; i++) {
        struct vu_dma_unmap u = { .argsz = sizeof(u), .addr = 0x40000000ull + (uint64_t)i * 0x10000, .size = 0x10000 };
        assert_int_equal(send_msg(c, (uint16_t)(3100 + i), VU_DMA_UNMAP, 0, &u, sizeof(u), NULL, 0), 0);
    }
    for (int i = 0; i < 16; i++) {
        struct reply r;
        assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
        assert_int_equal(r.hdr.msg_id, i < 8 ? 3000 + i : 3100 + (i - 8));
        assert_int_equal(r.hdr.flags & VU_F_ERROR, 0);
        reply_free(&r);
    }
}

/* Commands the spec defines as server → client, or does not define,
   are not executed: an error reply. */
static void unknown_commands_refused(void **state) {
    CONN;
    static const uint16_t cmds[] = { 19, 20, 100, 0x7eff, 0xffff };
    for (size_t i = 0; i < COUNT_OF(cmds); i++) EXPECT_ERRNO(c, cmds[i], &info_req, sizeof(info_req), EINVAL);
}

/* test_bad_request_closes_fds: descriptors on a refused request are
   closed, not kept. Sent as the write end of a pipe: once the server
   closes its copy (and we ours), the read end sees end of file. */
static void refused_request_closes_fds(void **state) {
    CONN;
    int p[2];
    assert_int_equal(pipe(p), 0);
    struct vu_region_info bad = { .argsz = 32, .index = 1000 };
    int rc = request(c, VU_DEVICE_GET_REGION_INFO, 0, &bad, sizeof(bad), &p[1], 1, NULL);
    assert_true(rc > 0);
    close(p[1]);
    assert_alive(c);
    struct pollfd pf = { .fd = p[0], .events = POLLIN };
    assert_int_equal(poll(&pf, 1, 2000), 1);
    char b;
    assert_int_equal(read(p[0], &b, 1), 0);
    close(p[0]);
}

/* test_no_payload: commands that need a payload, header-only, each refused. */
static void header_only_each_command(void **state) {
    CONN;
    static const uint16_t cmds[] = { VU_DMA_MAP, VU_DMA_UNMAP, VU_DEVICE_GET_REGION_INFO, VU_DEVICE_GET_IRQ_INFO,
                                     VU_DEVICE_SET_IRQS, VU_REGION_WRITE };
    for (size_t i = 0; i < COUNT_OF(cmds); i++) EXPECT_ERRNO(c, cmds[i], NULL, 0, EINVAL);
}

/* test_too_small at the smallest payloads: one byte of each fixed structure. */
static void one_byte_payloads_refused(void **state) {
    CONN;
    static const uint16_t cmds[] = { VU_DMA_MAP, VU_DMA_UNMAP, VU_DEVICE_GET_INFO, VU_DEVICE_GET_REGION_INFO,
                                     VU_DEVICE_GET_IRQ_INFO, VU_DEVICE_SET_IRQS, VU_REGION_READ, VU_REGION_WRITE };
    uint8_t one = 16;
    for (size_t i = 0; i < COUNT_OF(cmds); i++) EXPECT_ERRNO(c, cmds[i], &one, 1, EINVAL);
}

/* A message split between header and payload, with a pause between,
   is still one message (a stream socket keeps no boundaries). */
static void header_then_payload_later(void **state) {
    CONN;
    struct vu_header h = { .msg_id = 55, .command = VU_DEVICE_GET_INFO, .msg_size = 32 };
    assert_int_equal(send_bytes(c, &h, 16, NULL, 0), 0);
    usleep(50000);   /* real time is the point: the server reads the header alone */
    assert_int_equal(send_bytes(c, &info_req, 16, NULL, 0), 0);
    struct reply r;
    assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
    assert_int_equal(r.hdr.msg_id, 55);
    assert_int_equal(r.len, 16);
    reply_free(&r);
}

/* Two messages in one write are two messages. */
static void two_messages_in_one_write(void **state) {
    CONN;
    send_info_batch(c, 2, 60, 1);
    for (int i = 0; i < 2; i++) {
        struct reply r;
        assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
        assert_int_equal(r.hdr.msg_id, 60 + i);
        reply_free(&r);
    }
}

/* A client that leaves mid-message does not take the server with it. */
static void half_message_then_disconnect(void **state) {
    CONN;
    struct vu_header h = { .msg_id = 1, .command = VU_DEVICE_GET_INFO, .msg_size = 32 };
    assert_int_equal(send_bytes(c, &h, 16, NULL, 0), 0);
    if (g_one_shot) return;
    conn_close(c);
    conn_open(c);
    assert_alive(c);
}

/* The No_reply flag on a command that fails: still no reply. */
static void no_reply_failure_silent(void **state) {
    CONN;
    struct vu_region_info bad = { .argsz = 32, .index = 1000 };
    assert_int_equal(send_msg(c, 800, VU_DEVICE_GET_REGION_INFO, VU_F_NO_REPLY, &bad, sizeof(bad), NULL, 0), 0);
    assert_int_equal(send_msg(c, 801, VU_DEVICE_GET_INFO, 0, &info_req, sizeof(info_req), NULL, 0), 0);
    struct reply r;
    assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
    assert_int_equal(r.hdr.msg_id, 801);
    reply_free(&r);
}

/* ---- replies the size QEMU's receive buffers allow ---- */

/* QEMU receives each reply into a buffer the size of its request (VERSION,
   GET_INFO, GET_IRQ_INFO, SET_IRQS, DMA_MAP/UNMAP, REGION_WRITE, RESET):
   a longer reply fails the request. */
static void replies_fit_request_size(void **state) {
    CONN;
    struct vu_irq_info ii = { .argsz = 16, .index = VU_PCI_ERR_IRQ };
    struct vu_irq_set is = { .argsz = 20, .flags = VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_TRIGGER, .index = VU_PCI_INTX_IRQ };
    struct vu_dma_map dm = { .argsz = 32, .flags = VU_DMA_READ_FLAG | VU_DMA_WRITE_FLAG, .addr = 0xb00000, .size = 0x1000 };
    struct vu_dma_unmap du = { .argsz = 24, .addr = 0xb00000, .size = 0x1000 };
    uint8_t rw[17] = { 0x3c, 0, 0, 0, 0, 0, 0, 0, VU_PCI_CONFIG_REGION, 0, 0, 0, 1, 0, 0, 0, 0x0b };
    struct { uint16_t cmd; const void *p; size_t n; } m[] = {
        { VU_DEVICE_GET_INFO, &info_req, sizeof(info_req) }, { VU_DEVICE_GET_IRQ_INFO, &ii, sizeof(ii) },
        { VU_DEVICE_SET_IRQS, &is, sizeof(is) }, { VU_DMA_MAP, &dm, sizeof(dm) }, { VU_DMA_UNMAP, &du, sizeof(du) },
        { VU_REGION_WRITE, rw, sizeof(rw) },
    };
    for (size_t i = 0; i < COUNT_OF(m); i++) {
        struct reply r;
        int rc = request(c, m[i].cmd, 0, m[i].p, m[i].n, NULL, 0, &r);
        assert_true(rc >= 0);
        if (rc == 0) {
            if (VU_HEADER_SIZE + r.len > VU_HEADER_SIZE + m[i].n)
                fail_msg("command %u: a %u-byte reply to a %zu-byte request", m[i].cmd, r.len, m[i].n);
            assert_int_equal(r.nfds, 0);
            reply_free(&r);
        }
    }
}

/* GET_REGION_INFO: QEMU's buffer is 16 + argsz; REGION_READ: 32 + count. */
static void replies_fit_argsz_and_count(void **state) {
    CONN;
    for (uint32_t i = 0; i < VU_PCI_NUM_REGIONS; i++) {
        struct reply r;
        assert_int_equal(region_info(c, i, 32, &r), 0);
        assert_true(r.len <= 32);
        reply_free(&r);
    }
    struct vu_region_access a = { .offset = 0, .region = VU_PCI_CONFIG_REGION, .count = 64 };
    struct reply r;
    assert_int_equal(request(c, VU_REGION_READ, 0, &a, sizeof(a), NULL, 0, &r), 0);
    assert_true(r.len <= 16 + 64);
    assert_int_equal(r.nfds, 0);
    reply_free(&r);
}

/* Replies never set No_reply, and only the type and Error flag bits. */
static void reply_flags_clean(void **state) {
    CONN;
    struct vu_region_info bad = { .argsz = 32, .index = 1000 };
    for (int k = 0; k < 2; k++) {
        assert_int_equal(send_msg(c, (uint16_t)(70 + k), k ? VU_DEVICE_GET_REGION_INFO : VU_DEVICE_GET_INFO, 0,
                                  k ? (const void *)&bad : (const void *)&info_req, k ? sizeof(bad) : sizeof(info_req), NULL, 0), 0);
        struct reply r;
        assert_int_equal(recv_msg(c, &r, g_timeout_ms), 0);
        assert_int_equal(r.hdr.flags & ~(VU_F_TYPE_MASK | VU_F_ERROR), 0);
        reply_free(&r);
    }
}

/* QEMU disables an index more than once across resets. */
static void set_irqs_disable_twice(void **state) {
    CONN;
    struct vu_irq_set s = { .argsz = 20, .flags = VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_TRIGGER, .index = VU_PCI_ERR_IRQ };
    assert_int_equal(req(c, VU_DEVICE_SET_IRQS, &s, sizeof(s)), 0);
    assert_int_equal(req(c, VU_DEVICE_SET_IRQS, &s, sizeof(s)), 0);
}

/* DMA_UNMAP takes no descriptor. */
static void dma_unmap_with_fd(void **state) {
    CONN;
    int fd = new_eventfd();
    struct vu_dma_unmap u = { .argsz = 24, .flags = VU_UNMAP_ALL };
    assert_errno(request(c, VU_DMA_UNMAP, 0, &u, sizeof(u), &fd, 1, NULL), EINVAL);
    close(fd);
    assert_alive(c);
}

const struct check header_checks[] = {
    SPEC(unknown_command, "§2"),
    OPTIONAL(reply_typed_message_ignored, "§2", "strict"),
    OPTIONAL(unknown_header_flags, "§2", "strict"),
    OPTIONAL(error_field_in_command, "§2", "strict"),
    SPEC(dma_read_from_client_refused, "§12"),
    SPEC(dirty_pages_unsupported, "§2"),
    SPEC(header_only_refused, "§16"),
    SPEC(undersized_msg_size_closes_connection, "§1"),
    SPEC(oversized_message_refused, "§1"),
    OPTIONAL(fds_on_command_without_fds, "§1", "strict"),
    SPEC(too_many_fds, "§1"),
    SPEC(partial_message_reassembled, "§1"),
    QEMU(pipelined_requests_in_order, "§1"),
    SPEC(error_reply_is_header_only, "§16"),
    SPEC(reply_echoes_extreme_ids, "§2"),
    SPEC(reused_ids_all_answered, "§2"),
    SPEC(no_reply_flag_suppresses_reply, "§2"),
    QEMU(pipelined_mixed_commands_in_order, "§1"),
    QEMU(pipelined_dma_maps, "§4"),
    SPEC(unknown_commands_refused, "§2"),
    OPTIONAL(refused_request_closes_fds, "§1", "strict"),
    SPEC(header_only_each_command, "§16"),
    SPEC(one_byte_payloads_refused, "§16"),
    SPEC(header_then_payload_later, "§1"),
    SPEC(two_messages_in_one_write, "§1"),
    SPEC(half_message_then_disconnect, "§1"),
    QEMU(no_reply_failure_silent, "§10"),
    QEMU(replies_fit_request_size, "§18"),
    QEMU(replies_fit_argsz_and_count, "§18"),
    SPEC(reply_flags_clean, "§2"),
    QEMU(set_irqs_disable_twice, "§9"),
    OPTIONAL(dma_unmap_with_fd, "§4", "strict"),
};
const size_t header_checks_count = COUNT_OF(header_checks);
