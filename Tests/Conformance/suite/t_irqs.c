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
    uint32_t index = irq_count(c, VU_PCI_INTX_IRQ) ? VU_PCI_INTX_IRQ : VU_PCI_MSI_IRQ;
    skip_unless(irq_count(c, index) > 0);
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
    skip_unless(irq_count(c, VU_PCI_INTX_IRQ) > 0);
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, TRIGGER_EVENTFD, VU_PCI_INTX_IRQ, 0, 1, &fd, 1), 0);
    uint8_t p[21];
    struct vu_irq_set s = { .argsz = 21, .flags = VU_IRQ_SET_DATA_BOOL | VU_IRQ_SET_ACTION_TRIGGER, .index = 0, .start = 0, .count = 1 };
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
};
const size_t irq_checks_count = COUNT_OF(irq_checks);
