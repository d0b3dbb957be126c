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
        usleep(100);
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
    uint8_t batch[8 * 32];
    for (int i = 0; i < 8; i++) {
        struct vu_header h = { .msg_id = (uint16_t)(1000 + i), .command = VU_DEVICE_GET_INFO, .msg_size = 32 };
        memcpy(batch + 32 * i, &h, 16);
        memcpy(batch + 32 * i + 16, &info_req, 16);
    }
    assert_int_equal(send_bytes(c, batch, sizeof(batch), NULL, 0), 0);
    for (int i = 0; i < 8; i++) {
        struct reply r;
        assert_int_equal(recv_msg(c, &r, 5000), 0);
        assert_int_equal(r.hdr.msg_id, 1000 + i);
        reply_free(&r);
    }
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
};
const size_t header_checks_count = COUNT_OF(header_checks);
