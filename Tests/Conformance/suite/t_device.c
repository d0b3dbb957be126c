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

const struct check device_checks[] = {
    OPTIONAL(profile_intx_raised, "§20", "profile_intx"),
    OPTIONAL(profile_echo, "§20", "profile_echo"),
};
const size_t device_checks_count = COUNT_OF(device_checks);
