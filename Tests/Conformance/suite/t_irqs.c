/* DEVICE_SET_IRQS: Protocol/README.md §9; Linux VFIO_DEVICE_SET_IRQS. */
#include "suite.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>

#define TRIGGER_EVENTFD (VU_IRQ_SET_DATA_EVENTFD | VU_IRQ_SET_ACTION_TRIGGER)
#define TRIGGER_NONE (VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_TRIGGER)

static uint32_t irq_count(struct conn *c, uint32_t index) {
    struct vu_irq_info in = { .argsz = 16, .index = index }, out;
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_IRQ_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    memcpy(&out, r.payload, 16);
    reply_free(&r);
    return out.count;
}

/* An error case with a raw irq_set payload and optional fds. */
static void expect_set_error(struct conn *c, uint32_t argsz, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                             const uint8_t *bools, size_t nbools, const int *fds, int nfds, int e) {
    uint8_t p[64];
    struct vu_irq_set s = { .argsz = argsz, .flags = flags, .index = index, .start = start, .count = count };
    memcpy(p, &s, sizeof(s));
    if (nbools) memcpy(p + sizeof(s), bools, nbools);
    assert_errno(request(c, VU_DEVICE_SET_IRQS, 0, p, sizeof(s) + nbools, fds, nfds, NULL), e);
    assert_alive(c);
}

/* §9: attach an eventfd, fire it by a loopback TRIGGER, de-assign it. */
static void set_irqs_eventfd_and_loopback_trigger(void **state) {
    CONN;
    uint32_t index = 0;
    while (index < 4 && irq_count(c, index) == 0) index++;   /* INTx, MSI, MSI-X, else ERR */
    skip_because(index < 4, "the device has no INTx, MSI, MSI-X or ERR vector");
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, index, 0, 1, &fd, 1), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, index, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    /* No fds = de-assign: a later trigger signals nothing. */
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, index, 0, 1, NULL, 0), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, index, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 100), 0);
    close(fd);
}

/* §9: DATA_BOOL trigger fires only the selected vectors. */
static void set_irqs_bool_trigger(void **state) {
    CONN;
    uint32_t index = 0;
    while (index < 4 && irq_count(c, index) == 0) index++;   /* INTx, MSI, MSI-X, else ERR */
    skip_because(index < 4, "the device has no INTx, MSI, MSI-X or ERR vector");
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, index, 0, 1, &fd, 1), 0);
    uint8_t p[21];
    struct vu_irq_set s = { .argsz = 21, .flags = VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, .index = index, .start = 0, .count = 1 };
    memcpy(p, &s, 20);
    p[20] = 0;
    assert_int_equal(req(c, VU_DEVICE_SET_IRQS, p, sizeof(p)), 0);
    assert_int_equal(wait_eventfd(fd, 100), 0);
    p[20] = 1;
    assert_int_equal(req(c, VU_DEVICE_SET_IRQS, p, sizeof(p)), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    close(fd);
}

/* §9: INTx is automasked on trigger; a masked line holds back the next
   trigger until UNMASK, which delivers it. */
static void set_irqs_intx_mask_unmask(void **state) {
    CONN;
    skip_unless(irq_count(c, VU_PCI_INTX_IRQ) > 0);
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, 0, 0, 1, &fd, 1), 0);
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_MASK, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 100), 0);
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_UNMASK, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    /* Automasked after that delivery. */
    assert_int_equal(set_irqs(c, TRIGGER_NONE, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 100), 0);
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_UNMASK, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    close(fd);
}

/* §9: an UNMASK eventfd (KVM resample) is watched: signalling it unmasks. */
static void set_irqs_unmask_eventfd(void **state) {
    CONN;
    skip_unless(irq_count(c, VU_PCI_INTX_IRQ) > 0);
    int fd = new_eventfd(), resample = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, 0, 0, 1, &fd, 1), 0);
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_EVENTFD | VU_IRQ_SET_ACTION_UNMASK, 0, 0, 1, &resample, 1), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 100), 0);
    uint64_t one = 1;
    assert_int_equal(write(resample, &one, 8), 8);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    close(fd);
    close(resample);
}

/* §9: count 0 with TRIGGER|DATA_NONE disables an index. */
static void set_irqs_disable(void **state) {
    CONN;
    /* QEMU disables INTx this way on every reset, and MSI/MSI-X when the
       guest turns them off; --strict: every index, even one with no vectors. */
    for (uint32_t i = 0; i < 5; i++)
        if (g_strict || irq_count(c, i) > 0) assert_int_equal(set_irqs(c, TRIGGER_NONE, i, 0, 0, NULL, 0), 0);
    assert_alive(c);
}

static void set_irqs_bad_index(void **state) {
    CONN;
    expect_set_error(c, 20, TRIGGER_NONE, 5, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_two_data_types(void **state) {
    CONN;
    expect_set_error(c, 20, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, 0, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_two_actions(void **state) {
    CONN;
    expect_set_error(c, 20, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_MASK | VU_IRQ_SET_ACTION_TRIGGER, 0, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_unknown_flags(void **state) {
    CONN;
    expect_set_error(c, 20, TRIGGER_NONE | 0x100, 0, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_range_beyond_vectors(void **state) {
    CONN;
    uint32_t n = irq_count(c, VU_PCI_INTX_IRQ);
    expect_set_error(c, 20, TRIGGER_NONE, 0, n, 1, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_start_count_wraps(void **state) {
    CONN;
    expect_set_error(c, 20, TRIGGER_NONE, 0, 0xffffffff, 2, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_fd_count_mismatch(void **state) {
    CONN;
    int fds[2] = { new_eventfd(), new_eventfd() };
    expect_set_error(c, 20, TRIGGER_EVENTFD, 0, 0, 1, NULL, 0, fds, 2, EINVAL);
    close(fds[0]); close(fds[1]);
}

static void set_irqs_fds_with_data_none(void **state) {
    CONN;
    int fd = new_eventfd();
    expect_set_error(c, 20, TRIGGER_NONE, 0, 0, 1, NULL, 0, &fd, 1, EINVAL);
    close(fd);
}

static void set_irqs_bool_length_mismatch(void **state) {
    CONN;
    uint8_t b[2] = { 1, 1 };
    expect_set_error(c, 22, VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, 0, 0, 1, b, 2, NULL, 0, EINVAL);
}

static void set_irqs_argsz_mismatch(void **state) {
    CONN;
    expect_set_error(c, 24, TRIGGER_NONE, 0, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_count0_needs_trigger_none(void **state) {
    CONN;
    expect_set_error(c, 20, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_MASK, 0, 0, 0, NULL, 0, NULL, 0, EINVAL);
    expect_set_error(c, 20, TRIGGER_NONE, 0, 1, 0, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_err_only_trigger(void **state) {
    CONN;
    skip_unless(irq_count(c, VU_PCI_ERR_IRQ) > 0);
    expect_set_error(c, 20, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_MASK, VU_PCI_ERR_IRQ, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

static void set_irqs_short(void **state) {
    CONN;
    uint8_t p[12] = { 12 };
    EXPECT_ERRNO(c, VU_DEVICE_SET_IRQS, p, sizeof(p), EINVAL);
}


/* ---- more of libvfio-user's test_device_set_irqs.py and the VFIO rules it follows ---- */

/* The first index with vectors among INTx, MSI, MSI-X and ERR (or -1). */
static int some_vector_index(struct conn *c) {
    for (uint32_t i = 0; i < 4; i++) if (irq_count(c, i) > 0) return (int)i;
    return -1;
}

/* test_device_set_irqs_no_irq_set: the header only. */
static void set_irqs_header_only(void **state) {
    CONN;
    EXPECT_ERRNO(c, VU_DEVICE_SET_IRQS, NULL, 0, EINVAL);
}

/* test_device_set_irqs_bad_start_count_range3: start beyond the vectors with count 1. */
static void set_irqs_start_beyond(void **state) {
    CONN;
    expect_set_error(c, 20, TRIGGER_NONE, VU_PCI_ERR_IRQ, 5, 1, NULL, 0, NULL, 0, EINVAL);
}

/* test_device_set_irqs_bad_action_for_req_irq: REQ only triggers. */
static void set_irqs_req_only_trigger(void **state) {
    CONN;
    expect_set_error(c, 20, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_UNMASK, VU_PCI_REQ_IRQ, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

/* test_device_set_irqs_bad_start_count_range_for_err_irq / _for_req_irq: one vector each. */
static void set_irqs_err_range(void **state) {
    CONN;
    expect_set_error(c, 20, TRIGGER_NONE, VU_PCI_ERR_IRQ, 1, 1, NULL, 0, NULL, 0, EINVAL);
    expect_set_error(c, 20, TRIGGER_NONE, VU_PCI_ERR_IRQ, 0, 2, NULL, 0, NULL, 0, EINVAL);
}
static void set_irqs_req_range(void **state) {
    CONN;
    expect_set_error(c, 20, TRIGGER_NONE, VU_PCI_REQ_IRQ, 1, 1, NULL, 0, NULL, 0, EINVAL);
    expect_set_error(c, 20, TRIGGER_NONE, VU_PCI_REQ_IRQ, 0, 2, NULL, 0, NULL, 0, EINVAL);
}

/* test_device_set_irqs_bad_action_and_data_type_for_count_0: count 0 only with TRIGGER|DATA_NONE. */
static void set_irqs_count0_bool(void **state) {
    CONN;
    expect_set_error(c, 20, VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, 0, 0, 0, NULL, 0, NULL, 0, EINVAL);
    expect_set_error(c, 20, VU_IRQ_SET_DATA_EVENTFD | VU_IRQ_SET_ACTION_UNMASK, 0, 0, 0, NULL, 0, NULL, 0, EINVAL);
}

/* test_device_set_irqs_bad_fds_for_DATA_BOOL: descriptors with DATA_BOOL. */
static void set_irqs_fds_with_data_bool(void **state) {
    CONN;
    int fd = new_eventfd();
    uint8_t b = 1;
    expect_set_error(c, 21, VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, VU_PCI_ERR_IRQ, 0, 1, &b, 1, &fd, 1, EINVAL);
    close(fd);
}

/* test_device_set_irqs_trigger_bool_too_large: more booleans than count. */
static void set_irqs_bool_too_long(void **state) {
    CONN;
    uint8_t b[4] = { 1, 1, 1, 1 };
    expect_set_error(c, 24, VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, VU_PCI_ERR_IRQ, 0, 1, b, 4, NULL, 0, EINVAL);
}

/* test_device_set_irqs_trigger_bool_too_small: no boolean at all. */
static void set_irqs_bool_missing(void **state) {
    CONN;
    expect_set_error(c, 20, VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, VU_PCI_ERR_IRQ, 0, 1, NULL, 0, NULL, 0, EINVAL);
}

/* test_device_set_irqs_enable_update: a second eventfd replaces the first. */
static void set_irqs_eventfd_replaced(void **state) {
    CONN;
    int index = some_vector_index(c);
    skip_because(index >= 0, "the device has no INTx, MSI, MSI-X or ERR vector");
    int a = new_eventfd(), b = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, (uint32_t)index, 0, 1, &a, 1), 0);
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, (uint32_t)index, 0, 1, &b, 1), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, (uint32_t)index, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(b, 2000), 1);
    assert_int_equal(wait_eventfd(a, 100), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, (uint32_t)index, 0, 0, NULL, 0), 0);
    close(a); close(b);
}

/* ERR takes an eventfd (kernel vfio-pci's error notifier; QEMU asks for it). */
static void set_irqs_err_eventfd(void **state) {
    CONN;
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_ERR_IRQ, 0, 1, &fd, 1), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_ERR_IRQ, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_ERR_IRQ, 0, 0, NULL, 0), 0);
    close(fd);
}

/* REQ takes an eventfd: the server's "please release the device". */
static void set_irqs_req_eventfd(void **state) {
    CONN;
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_REQ_IRQ, 0, 1, &fd, 1), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_REQ_IRQ, 0, 0, NULL, 0), 0);
    close(fd);
}

/* MSI: every vector takes an eventfd and fires alone. */
static void set_irqs_msi_vectors(void **state) {
    CONN;
    uint32_t n = irq_count(c, VU_PCI_MSI_IRQ);
    skip_because(n > 0, "the device has no MSI vector");
    if (n > 8) n = 8;
    int fds[8];
    for (uint32_t i = 0; i < n; i++) fds[i] = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_MSI_IRQ, 0, n, fds, (int)n), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_MSI_IRQ, n - 1, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fds[n - 1], 2000), 1);
    for (uint32_t i = 0; i + 1 < n; i++) assert_int_equal(wait_eventfd(fds[i], 0), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_MSI_IRQ, 0, 0, NULL, 0), 0);
    for (uint32_t i = 0; i < n; i++) close(fds[i]);
}

/* MSI-X: a sub-range of vectors, then one more added without disturbing them. */
static void set_irqs_msix_partial_ranges(void **state) {
    CONN;
    uint32_t n = irq_count(c, VU_PCI_MSIX_IRQ);
    skip_because(n >= 3, "the device has fewer than 3 MSI-X vectors");
    int a = new_eventfd(), b = new_eventfd(), d = new_eventfd();
    int ab[2] = { a, b };
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_MSIX_IRQ, 0, 2, ab, 2), 0);
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_MSIX_IRQ, 2, 1, &d, 1), 0);
    uint8_t p[20 + 3];
    struct vu_irq_set s = { .argsz = sizeof(p), .flags = VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER,
                            .index = VU_PCI_MSIX_IRQ, .start = 0, .count = 3 };
    memcpy(p, &s, 20);
    p[20] = 1; p[21] = 0; p[22] = 1;
    assert_int_equal(req(c, VU_DEVICE_SET_IRQS, p, sizeof(p)), 0);
    assert_int_equal(wait_eventfd(a, 2000), 1);
    assert_int_equal(wait_eventfd(d, 2000), 1);
    assert_int_equal(wait_eventfd(b, 100), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_MSIX_IRQ, 0, 0, NULL, 0), 0);
    close(a); close(b); close(d);
}

/* Every MSI-X vector at once, up to the most descriptors one message may carry. */
static void set_irqs_msix_many(void **state) {
    CONN;
    uint32_t n = irq_count(c, VU_PCI_MSIX_IRQ);
    skip_because(n > 1, "the device has fewer than 2 MSI-X vectors");
    if (n > c->server_max_msg_fds) n = c->server_max_msg_fds;
    if (n > 16) n = 16;
    int fds[16];
    for (uint32_t i = 0; i < n; i++) fds[i] = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_MSIX_IRQ, 0, n, fds, (int)n), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_MSIX_IRQ, 0, n, NULL, 0), 0);
    for (uint32_t i = 0; i < n; i++) assert_int_equal(wait_eventfd(fds[i], 2000), 1);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_MSIX_IRQ, 0, 0, NULL, 0), 0);
    for (uint32_t i = 0; i < n; i++) close(fds[i]);
}

/* A loopback trigger with no eventfd attached signals nothing and is not an error. */
static void set_irqs_trigger_without_eventfd(void **state) {
    CONN;
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_ERR_IRQ, 0, 1, NULL, 0), 0);
    assert_alive(c);
}

/* INTx masked with DATA_BOOL holds a trigger back; unmasking with DATA_BOOL delivers it. */
static void set_irqs_intx_mask_by_bool(void **state) {
    CONN;
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, 0, 0, 1, &fd, 1), 0);
    uint8_t p[21];
    struct vu_irq_set s = { .argsz = 21, .flags = VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_MASK, .index = 0, .start = 0, .count = 1 };
    memcpy(p, &s, 20);
    p[20] = 1;
    assert_int_equal(req(c, VU_DEVICE_SET_IRQS, p, sizeof(p)), 0);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, 0, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 100), 0);
    s.flags = VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_UNMASK;
    memcpy(p, &s, 20);
    assert_int_equal(req(c, VU_DEVICE_SET_IRQS, p, sizeof(p)), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    close(fd);
}

/* An interrupt configuration is the connection's: a new client starts with
   no eventfds attached (the old ones were released with the client). */
static void set_irqs_released_with_client(void **state) {
    CONN;
    skip_because(!g_one_shot, "the server serves one connection");
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_ERR_IRQ, 0, 1, &fd, 1), 0);
    conn_close(c);
    conn_open(c);
    assert_int_equal(set_irqs(c, TRIGGER_NONE, VU_PCI_ERR_IRQ, 0, 1, NULL, 0), 0);
    assert_int_equal(wait_eventfd(fd, 200), 0);
    close(fd);
}

const struct check irq_checks[] = {
    SPEC(set_irqs_eventfd_and_loopback_trigger, "§9"),
    SPEC(set_irqs_bool_trigger, "§9"),
    { "set_irqs_intx_mask_unmask", set_irqs_intx_mask_unmask, setup_open, teardown_conn, CLASS_QEMU, "§9", "intx" },
    { "set_irqs_unmask_eventfd", set_irqs_unmask_eventfd, setup_open, teardown_conn, CLASS_QEMU, "§9", "intx" },
    QEMU(set_irqs_disable, "§9"),
    SPEC(set_irqs_bad_index, "§9"),
    SPEC(set_irqs_two_data_types, "§9"),
    SPEC(set_irqs_two_actions, "§9"),
    OPTIONAL(set_irqs_unknown_flags, "§9", "strict"),
    SPEC(set_irqs_range_beyond_vectors, "§9"),
    SPEC(set_irqs_start_count_wraps, "§9"),
    SPEC(set_irqs_fd_count_mismatch, "§9"),
    SPEC(set_irqs_fds_with_data_none, "§9"),
    SPEC(set_irqs_bool_length_mismatch, "§9"),
    OPTIONAL(set_irqs_argsz_mismatch, "§9", "strict"),
    SPEC(set_irqs_count0_needs_trigger_none, "§9"),
    OPTIONAL(set_irqs_err_only_trigger, "§9", "err"),
    SPEC(set_irqs_short, "§9"),
    SPEC(set_irqs_header_only, "§9"),
    OPTIONAL(set_irqs_start_beyond, "§9", "err"),
    OPTIONAL(set_irqs_req_only_trigger, "§9", "req"),
    OPTIONAL(set_irqs_err_range, "§9", "err"),
    OPTIONAL(set_irqs_req_range, "§9", "req"),
    SPEC(set_irqs_count0_bool, "§9"),
    OPTIONAL(set_irqs_fds_with_data_bool, "§9", "err"),
    OPTIONAL(set_irqs_bool_too_long, "§9", "err"),
    OPTIONAL(set_irqs_bool_missing, "§9", "err"),
    SPEC(set_irqs_eventfd_replaced, "§9"),
    OPTIONAL(set_irqs_err_eventfd, "§9", "err"),
    OPTIONAL(set_irqs_req_eventfd, "§9", "req"),
    OPTIONAL(set_irqs_msi_vectors, "§9", "msi"),
    OPTIONAL(set_irqs_msix_partial_ranges, "§9", "msix"),
    OPTIONAL(set_irqs_msix_many, "§9", "msix"),
    OPTIONAL(set_irqs_trigger_without_eventfd, "§9", "err"),
    { "set_irqs_intx_mask_by_bool", set_irqs_intx_mask_by_bool, setup_open, teardown_conn, CLASS_QEMU, "§9", "intx" },
    SPEC(set_irqs_released_with_client, "§9"),
};
const size_t irq_checks_count = COUNT_OF(irq_checks);
