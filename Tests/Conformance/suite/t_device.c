/* Device-specific expectations from --profile (Protocol/README.md §20). */
#include "suite.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>

/* The profile's register writes raise INTx: the eventfd is signalled, the
   line is automasked, and clearing + UNMASK leaves it quiet. */
static void profile_intx_raised(void **state) {
    CONN;
    skip_unless(g_profile.intx_raise_count > 0);
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_EVENTFD | VU_IRQ_SET_ACTION_TRIGGER, VU_PCI_INTX_IRQ, 0, 1, &fd, 1), 0);
    for (int i = 0; i < g_profile.intx_raise_count; i++)
        assert_int_equal(reg_write(c, &g_profile.intx_raise[i], g_profile.intx_raise[i].value), 0);
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    if (g_profile.intx_clear.present) {
        uint64_t v;
        if (g_profile.intx_clear.value == (uint64_t)-1) assert_int_equal(reg_read(c, &g_profile.intx_clear, &v), 0);
        else assert_int_equal(reg_write(c, &g_profile.intx_clear, g_profile.intx_clear.value), 0);
        assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_UNMASK, VU_PCI_INTX_IRQ, 0, 1, NULL, 0), 0);
        assert_int_equal(wait_eventfd(fd, 100), 0);
    }
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_TRIGGER, VU_PCI_INTX_IRQ, 0, 0, NULL, 0), 0);
    close(fd);
}

/* Bytes written to the profile's echo register come back (mtty loopback). */
static void profile_echo(void **state) {
    CONN;
    skip_unless(g_profile.echo_write.present && g_profile.echo_read.present);
    const char *msg = "conformance";
    for (size_t i = 0; i < strlen(msg); i++) {
        uint64_t v;
        assert_int_equal(reg_write(c, &g_profile.echo_write, (uint8_t)msg[i]), 0);
        assert_int_equal(reg_read(c, &g_profile.echo_read, &v), 0);
        assert_int_equal(v, (uint8_t)msg[i]);
    }
}

/* The profile's INTx raised by posted writes (QEMU posts MMIO writes). */
static void profile_intx_posted(void **state) {
    CONN;
    int fd = new_eventfd();
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_EVENTFD | VU_IRQ_SET_ACTION_TRIGGER, VU_PCI_INTX_IRQ, 0, 1, &fd, 1), 0);
    for (int i = 0; i < g_profile.intx_raise_count; i++) {
        const struct reg_access *a = &g_profile.intx_raise[i];
        uint8_t p[sizeof(struct vu_region_access) + 8];
        struct vu_region_access h = { .offset = a->offset, .region = a->region, .count = a->width };
        memcpy(p, &h, sizeof(h));
        memcpy(p + sizeof(h), &a->value, a->width);
        assert_int_equal(send_msg(c, (uint16_t)(1200 + i), VU_REGION_WRITE, VU_F_NO_REPLY, p, sizeof(h) + a->width, NULL, 0), 0);
    }
    assert_int_equal(wait_eventfd(fd, 2000), 1);
    assert_int_equal(set_irqs(c, VU_IRQ_SET_DATA_NONE | VU_IRQ_SET_ACTION_TRIGGER, VU_PCI_INTX_IRQ, 0, 0, NULL, 0), 0);
    close(fd);
}

/* The regions and IRQ counts the profile names, each as GET_*_INFO says. */
static void profile_matches_info(void **state) {
    CONN;
    struct vu_device_info in = { .argsz = 16 };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    uint32_t flags = le32_at(r.payload + 4), regions = le32_at(r.payload + 8);
    reply_free(&r);
    if (g_profile.reset >= 0) assert_int_equal(!!(flags & VU_DEVICE_FLAGS_RESET), g_profile.reset);
    if (g_profile.num_regions >= 0) assert_int_equal(regions, (uint32_t)g_profile.num_regions);
    for (uint32_t i = 0; i < PROFILE_MAX_REGIONS && i < regions; i++) {
        if (!g_profile.regions[i].present) continue;
        assert_int_equal(region_info(c, i, 32, &r), 0);
        assert_int_equal(le64_at(r.payload + 16), g_profile.regions[i].size);
        reply_free(&r);
    }
    for (uint32_t i = 0; i < 5; i++) {
        if (g_profile.irq_count[i] < 0) continue;
        struct vu_irq_info q = { .argsz = 16, .index = i };
        assert_int_equal(request(c, VU_DEVICE_GET_IRQ_INFO, 0, &q, sizeof(q), NULL, 0, &r), 0);
        assert_int_equal(le32_at(r.payload + 12), (uint32_t)g_profile.irq_count[i]);
        reply_free(&r);
    }
}

const struct check device_checks[] = {
    OPTIONAL(profile_intx_raised, "§20", "profile_intx"),
    OPTIONAL(profile_echo, "§20", "profile_echo"),
    OPTIONAL(profile_intx_posted, "§20", "profile_intx"),
    OPTIONAL(profile_matches_info, "§20", "profile"),
};
const size_t device_checks_count = COUNT_OF(device_checks);
