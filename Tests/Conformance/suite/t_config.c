/* PCI configuration space (region 7): Protocol/README.md §17; PCI Local
   Bus 3.0 §6.1–6.2, §6.7. */
#include "suite.h"
#include <errno.h>
#include <string.h>

static void read_config(struct conn *c, uint8_t cfg[256]) {
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0, 256, cfg), 0);
}

static uint16_t u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* §17: the whole space reads in one REGION_READ (QEMU does at realize),
   and the header fields are a type-0 function's. */
static void config_header_fields(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    assert_int_not_equal(u16(cfg), 0xffff);
    assert_int_not_equal(u16(cfg), 0);
    assert_int_equal(cfg[0x0e] & 0x7f, 0);
    if (g_profile.vendor_id >= 0) assert_int_equal(u16(cfg), g_profile.vendor_id);
    if (g_profile.device_id >= 0) assert_int_equal(u16(cfg + 2), g_profile.device_id);
    if (g_profile.class_code >= 0) assert_int_equal(cfg[9] | cfg[10] << 8 | cfg[11] << 16, g_profile.class_code);
    assert_true(cfg[0x3d] <= 4);
}

/* §17: each BAR answers an all-ones write with its size mask, keeping its
   type bits; a BAR for an absent region reads 0. */
static void config_bar_sizing(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    for (uint32_t bar = 0; bar < 6; bar++) {
        struct reply r;
        assert_int_equal(region_info(c, bar, 32, &r), 0);
        uint64_t size = le64_at(r.payload + 16);
        reply_free(&r);
        uint32_t off = 0x10 + 4 * bar, orig = le32_at(cfg + off), ones = 0xffffffff, got;
        assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, off, 4, &ones), 0);
        assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, off, 4, &got), 0);
        if (size == 0) {
            /* absent, or the upper half of a 64-bit BAR */
            if (bar > 0 && (le32_at(cfg + off - 4) & 0x7) == 0x4) { assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, off, 4, &orig), 0); continue; }
            assert_int_equal(got, 0);
        } else if (orig & 1) {
            assert_int_equal(got, (uint32_t)(~(size - 1) & ~0x3u) | 1);
        } else {
            uint32_t mask = (uint32_t)~(size - 1) & ~0xfu;
            assert_int_equal(got, mask | (orig & 0xf));
        }
        assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, off, 4, &orig), 0);
    }
}

/* §17: the capability list is dword-aligned, in range, and ends without loops. */
static void config_capability_list(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    int has_list = u16(cfg + 6) & 0x10;
    uint8_t ptr = has_list ? cfg[0x34] : 0;
    if (!has_list) return;
    uint8_t seen[256] = { 0 };
    int hops = 0;
    while (ptr) {
        assert_true(ptr >= 0x40 && ptr <= 0xfc);
        assert_int_equal(ptr & 3, 0);
        assert_false(seen[ptr]);
        seen[ptr] = 1;
        assert_true(++hops <= 48);
        ptr = cfg[ptr + 1];
    }
}

/* §17: identity and read-only fields ignore writes (and the write succeeds,
   as QEMU forwards every guest write). */
static void config_read_only_fields(void **state) {
    CONN;
    uint8_t before[256], after[256];
    read_config(c, before);
    uint32_t junk = 0x12345678;
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x00, 4, &junk), 0);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x08, 4, &junk), 0);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x2c, 4, &junk), 0);
    uint8_t pin = 3;
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x3d, 1, &pin), 0);
    read_config(c, after);
    assert_memory_equal(before, after, 0x10);
    assert_memory_equal(before + 0x2c, after + 0x2c, 4);
    assert_int_equal(before[0x3d], after[0x3d]);
}

/* §17: the interrupt line is guest-writable; status error bits are
   write-1-to-clear, so writing 1s never sets them. */
static void config_writable_and_w1c(void **state) {
    CONN;
    uint8_t line = 0x0a, got;
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x3c, 1, &line), 0);
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x3c, 1, &got), 0);
    assert_int_equal(got, 0x0a);
    uint16_t status_before, ones = 0xffff, status_after;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 6, 2, &status_before), 0);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 6, 2, &ones), 0);
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 6, 2, &status_after), 0);
    assert_int_equal(status_after & 0xf900, 0);
    assert_int_equal(status_after & 0x10, status_before & 0x10);
}

/* §17, reference transcripts: the config writes QEMU, SeaBIOS and Linux
   make all succeed: ROM sizing, COMMAND values, BARs to 0. */
static void config_qemu_writes_accepted(void **state) {
    CONN;
    uint32_t rom[] = { 0xfffff800, 0xfffffffe, 0 };
    for (size_t i = 0; i < 3; i++) assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x30, 4, &rom[i]), 0);
    uint16_t cmds[] = { 0x0, 0x100, 0x103, 0x503, 0x0 };
    for (size_t i = 0; i < 5; i++) assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 4, 2, &cmds[i]), 0);
    uint32_t zero = 0;
    for (uint32_t off = 0x10; off <= 0x24; off += 4) assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, off, 4, &zero), 0);
    uint32_t rom_now;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x30, 4, &rom_now), 0);
}

/* §17: byte, word and dword accesses at every offset read consistently. */
static void config_access_widths(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    for (uint32_t off = 0; off < 64; off += 4) {
        uint32_t d; uint16_t w; uint8_t b;
        assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, off, 4, &d), 0);
        assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, off + 2, 2, &w), 0);
        assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, off + 1, 1, &b), 0);
        assert_int_equal(d, le32_at(cfg + off));
        assert_int_equal(w, u16(cfg + off + 2));
        assert_int_equal(b, cfg[off + 1]);
    }
}


/* ---- more config space: what QEMU reads and writes at realize, reset and run time ---- */

static uint32_t irq_count_of(struct conn *c, uint32_t index) {
    struct vu_irq_info in = { .argsz = 16, .index = index };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_IRQ_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    uint32_t n = le32_at(r.payload + 12);
    reply_free(&r);
    return n;
}

static uint64_t size_of_region(struct conn *c, uint32_t index) {
    struct reply r;
    assert_int_equal(region_info(c, index, 32, &r), 0);
    uint64_t size = le64_at(r.payload + 16);
    reply_free(&r);
    return size;
}

/* Find capability `id` in the standard list; 0 when absent. */
static uint8_t find_cap(const uint8_t cfg[256], uint8_t id) {
    if (!(u16(cfg + 6) & 0x10)) return 0;
    uint8_t ptr = cfg[0x34] & 0xfc;
    for (int hops = 0; ptr && hops < 48; hops++) {
        if (cfg[ptr] == id) return ptr;
        ptr = cfg[ptr + 1] & 0xfc;
    }
    return 0;
}

/* QEMU reads INT_PIN to wire INTx: a pin exactly when the device has an INTx vector. */
static void config_interrupt_pin_matches_intx(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    assert_int_equal(cfg[0x3d] != 0, irq_count_of(c, VU_PCI_INTX_IRQ) > 0);
}

/* PCI: a BAR with no region behind it is hardwired to 0 (QEMU emulates the
   guest's BARs itself, so this is Protocol/README.md's rule, --strict). */
static void config_bars_match_regions(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    for (uint32_t bar = 0; bar < 6; bar++) {
        uint32_t v = le32_at(cfg + 0x10 + 4 * bar);
        int upper = bar > 0 && (le32_at(cfg + 0x10 + 4 * (bar - 1)) & 0x7) == 0x4;
        if (size_of_region(c, bar) == 0 && !upper) assert_int_equal(v, 0);
    }
}

/* After sizing, writing the original value back restores the BAR. */
static void config_bar_restored(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    for (uint32_t bar = 0; bar < 6; bar++) {
        uint32_t off = 0x10 + 4 * bar, orig = le32_at(cfg + off), ones = 0xffffffff, back;
        assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, off, 4, &ones), 0);
        assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, off, 4, &orig), 0);
        assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, off, 4, &back), 0);
        assert_int_equal(back, orig);
    }
}

/* QEMU sizes the option ROM through 0x30: all ones then read; no ROM region reads 0. */
static void config_rom_bar_sizing(void **state) {
    CONN;
    uint32_t mask = 0xfffff800, got, zero = 0;
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x30, 4, &mask), 0);
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x30, 4, &got), 0);
    uint64_t rom = size_of_region(c, VU_PCI_ROM_REGION);
    if (rom == 0) assert_int_equal(got, 0);
    else assert_int_equal(got & 0xfffff800, (uint32_t)~(rom - 1) & 0xfffff800);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x30, 4, &zero), 0);
}

/* COMMAND's memory, I/O and bus-master bits read back as written (when the
   device has such BARs; a bit it does not implement may read 0). */
static void config_command_round_trip(void **state) {
    CONN;
    uint16_t orig, v = 0x0007, got, zero = 0;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x04, 2, &orig), 0);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x04, 2, &v), 0);
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x04, 2, &got), 0);
    assert_int_equal(got & ~0x0007, orig & ~0x0007 & ~0x0400);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x04, 2, &zero), 0);
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x04, 2, &got), 0);
    assert_int_equal(got & 0x0007, 0);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x04, 2, &orig), 0);
}

/* INTX_DISABLE (COMMAND bit 10) is writable: QEMU and Linux toggle it. */
static void config_intx_disable_bit(void **state) {
    CONN;
    uint16_t orig, v, got;
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x04, 2, &orig), 0);
    v = (uint16_t)(orig | 0x0400);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x04, 2, &v), 0);
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0x04, 2, &got), 0);
    assert_true(got & 0x0400);
    assert_int_equal(region_write(c, VU_PCI_CONFIG_REGION, 0x04, 2, &orig), 0);
}

/* The MSI capability, when present, agrees with the MSI index's vector
   count (QEMU sets MSI up from the capability; vectors without one, as the
   mtty sample reports, are never used). */
static void config_msi_capability(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    uint8_t at = find_cap(cfg, 0x05);
    uint32_t n = irq_count_of(c, VU_PCI_MSI_IRQ);
    skip_because(at != 0, "the device has no MSI capability");
    assert_true(n > 0);
    uint16_t control = u16(cfg + at + 2);
    uint32_t capable = 1u << ((control >> 1) & 7);
    assert_true(capable <= 32);
    assert_true(n <= capable);
}

/* The MSI-X capability, when present: table size is the MSI-X vector count,
   and the table and PBA lie inside BARs that exist. */
static void config_msix_capability(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    uint8_t at = find_cap(cfg, 0x11);
    uint32_t n = irq_count_of(c, VU_PCI_MSIX_IRQ);
    skip_because(at || n, "the device has neither an MSI-X capability nor MSI-X vectors");
    assert_true(at != 0);
    uint32_t size = (u16(cfg + at + 2) & 0x7ff) + 1;
    assert_int_equal(size, n);
    uint32_t table = le32_at(cfg + at + 4), pba = le32_at(cfg + at + 8);
    uint64_t tbar = size_of_region(c, table & 7), pbar = size_of_region(c, pba & 7);
    assert_true((table & 7) < 6 && (pba & 7) < 6);
    assert_true((uint64_t)(table & ~7u) + 16ull * size <= tbar);
    assert_true((uint64_t)(pba & ~7u) + ((size + 63) / 64) * 8 <= pbar);
}

/* The status register's capability bit is set exactly when the pointer is. */
static void config_capability_bit_matches_pointer(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    if (u16(cfg + 6) & 0x10) assert_true(cfg[0x34] >= 0x40);
    else assert_int_equal(cfg[0x34], 0);
}

/* Writes to the vendor and device ids succeed (QEMU forwards them) and change nothing. */
static void config_id_writes_ignored(void **state) {
    CONN;
    uint8_t before[4], after[4];
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0, 4, before), 0);
    uint32_t junk = 0x12345678;
    int rc = region_write(c, VU_PCI_CONFIG_REGION, 0, 4, &junk);
    assert_true(rc == 0 || !g_strict);
    assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, 0, 4, after), 0);
    assert_memory_equal(before, after, 4);
}

/* The header type says a single-function type-0 header or a multi-function
   one; BIST is 0 or not capable. */
static void config_header_type_and_bist(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    assert_int_equal(cfg[0x0e] & 0x7f, 0);
    assert_int_equal(cfg[0x0f] & 0x40, 0);
}

/* The space reads the same in any access size (the whole, then dword by dword). */
static void config_read_consistency(void **state) {
    CONN;
    uint8_t whole[256];
    read_config(c, whole);
    for (uint32_t off = 0; off < 256; off += 4) {
        uint32_t v;
        assert_int_equal(region_read(c, VU_PCI_CONFIG_REGION, off, 4, &v), 0);
        /* Status bits can change between reads: compare everything else. */
        if (off == 0x04) continue;
        assert_memory_equal(&v, whole + off, 4);
    }
}

/* The profile's subsystem and class, when it names them. */
static void config_profile_identity(void **state) {
    CONN;
    uint8_t cfg[256];
    read_config(c, cfg);
    assert_true(g_profile.vendor_id >= 0 || g_profile.device_id >= 0 || g_profile.class_code >= 0);
    if (g_profile.vendor_id >= 0) assert_int_equal(u16(cfg), g_profile.vendor_id);
    if (g_profile.device_id >= 0) assert_int_equal(u16(cfg + 2), g_profile.device_id);
    if (g_profile.class_code >= 0) assert_int_equal(cfg[9] | cfg[10] << 8 | cfg[11] << 16, g_profile.class_code);
}

const struct check config_checks[] = {
    QEMU(config_header_fields, "§17"),
    QEMU(config_bar_sizing, "§17"),
    { "config_capability_list", config_capability_list, setup_open, teardown_conn, CLASS_QEMU, "§17", "pci_caps" },
    QEMU(config_read_only_fields, "§17"),
    QEMU(config_writable_and_w1c, "§17"),
    QEMU(config_qemu_writes_accepted, "§17"),
    QEMU(config_access_widths, "§17"),
    QEMU(config_interrupt_pin_matches_intx, "§17"),
    OPTIONAL(config_bars_match_regions, "§17", "strict"),
    QEMU(config_bar_restored, "§17"),
    QEMU(config_rom_bar_sizing, "§17"),
    QEMU(config_command_round_trip, "§17"),
    QEMU(config_intx_disable_bit, "§17"),
    QEMU(config_msi_capability, "§17"),
    QEMU(config_msix_capability, "§17"),
    QEMU(config_capability_bit_matches_pointer, "§17"),
    QEMU(config_id_writes_ignored, "§17"),
    QEMU(config_header_type_and_bist, "§17"),
    QEMU(config_read_consistency, "§17"),
    OPTIONAL(config_profile_identity, "§20", "profile"),
};
const size_t config_checks_count = COUNT_OF(config_checks);
