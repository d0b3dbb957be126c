/* DEVICE_GET_INFO §5, DEVICE_GET_REGION_INFO §6, GET_REGION_IO_FDS §7,
   DEVICE_GET_IRQ_INFO §8. */
#include "suite.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint32_t num_regions(struct conn *c) {
    struct vu_device_info in = { .argsz = 16 }, out;
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    memcpy(&out, r.payload, sizeof(out));
    reply_free(&r);
    return out.num_regions;
}

/* §5: PCI flag, ≥ 9 regions, 5 IRQ indices, RESET as the profile says. */
static void device_info_valid(void **state) {
    CONN;
    struct vu_device_info in = { .argsz = 16 }, out;
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    assert_int_equal(r.len, 16);
    memcpy(&out, r.payload, 16);
    reply_free(&r);
    assert_int_equal(out.argsz, 16);
    assert_true(out.flags & VU_DEVICE_FLAGS_PCI);
    assert_int_equal(out.flags & ~(VU_DEVICE_FLAGS_PCI | VU_DEVICE_FLAGS_RESET), 0);
    assert_true(out.num_regions >= VU_PCI_NUM_REGIONS && out.num_regions <= 100);
    assert_int_equal(out.num_irqs, 5);
    if (g_profile.reset >= 0) assert_int_equal(!!(out.flags & VU_DEVICE_FLAGS_RESET), g_profile.reset);
    if (g_profile.num_regions >= 0) assert_int_equal(out.num_regions, (uint32_t)g_profile.num_regions);
}

static void device_info_short(void **state) {
    CONN;
    EXPECT_ERRNO(c, VU_DEVICE_GET_INFO, "\x10\0\0\0\0\0\0\0", 8, EINVAL);
}

static void device_info_oversized(void **state) {
    CONN;
    uint8_t p[32] = { 16 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_INFO, p, sizeof(p), EINVAL);
}

static void device_info_bad_argsz(void **state) {
    CONN;
    struct vu_device_info in = { .argsz = 8 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_INFO, &in, sizeof(in), EINVAL);
}

/* §6: every index answers; sizes, flags and mmap as the profile says; the
   reply never exceeds argsz. */
static void region_info_every_index(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        assert_int_equal(region_info(c, i, 32, &r), 0);
        assert_true(r.len == 32);
        struct vu_region_info ri;
        memcpy(&ri, r.payload, 32);
        assert_int_equal(ri.index, i);
        assert_true(ri.argsz >= 32);
        assert_int_equal(ri.flags & ~(VU_REGION_FLAG_READ | VU_REGION_FLAG_WRITE | VU_REGION_FLAG_MMAP | VU_REGION_FLAG_CAPS), 0);
        /* With argsz 32 there is no room for caps: no CAPS flag and no fd. */
        assert_int_equal(ri.flags & VU_REGION_FLAG_CAPS, 0);
        assert_int_equal(r.nfds, 0);
        if (i < PROFILE_MAX_REGIONS && g_profile.regions[i].present) {
            assert_int_equal(ri.size, g_profile.regions[i].size);
            assert_int_equal(!!(ri.flags & VU_REGION_FLAG_MMAP), g_profile.regions[i].mmap);
        }
        if (i == VU_PCI_CONFIG_REGION) assert_true(ri.size >= 256 && (ri.flags & VU_REGION_FLAG_READ));
        reply_free(&r);
    }
}

/* §6: a mappable region asked with argsz 32 reports the argsz it needs;
   asked again with that, it carries CAPS, cap_offset ≥ 32 and one fd. */
static void region_info_argsz_retry(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    int seen = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        assert_int_equal(region_info(c, i, 32, &r), 0);
        struct vu_region_info ri;
        memcpy(&ri, r.payload, 32);
        reply_free(&r);
        if (ri.argsz == 32) continue;
        seen++;
        assert_int_equal(region_info(c, i, ri.argsz, &r), 0);
        assert_int_equal(r.len, ri.argsz);
        struct vu_region_info full;
        memcpy(&full, r.payload, 32);
        assert_true(full.flags & VU_REGION_FLAG_CAPS);
        assert_true(full.cap_offset >= 32 && full.cap_offset < full.argsz);
        if (full.flags & VU_REGION_FLAG_MMAP) assert_int_equal(r.nfds, 1);
        else assert_int_equal(r.nfds, 0);
        reply_free(&r);
    }
    (void)seen;
}

/* §6: the capability chain ends, stays inside the reply, and sparse areas
   lie inside the region; the fd maps with the advertised size. */
static void region_info_caps_and_fd(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        assert_int_equal(region_info(c, i, 4096, &r), 0);
        struct vu_region_info ri;
        memcpy(&ri, r.payload, 32);
        assert_int_equal(r.len, ri.argsz); /* not padded to what we offered */
        uint32_t next = (ri.flags & VU_REGION_FLAG_CAPS) ? ri.cap_offset : 0;
        int hops = 0;
        while (next) {
            assert_true(next >= 32 && next + 8 <= r.len);
            assert_true(++hops < 16);
            struct vu_cap_header h;
            memcpy(&h, r.payload + next, sizeof(h));
            if (h.id == VU_CAP_SPARSE_MMAP) {
                uint32_t areas = le32_at(r.payload + next + 8);
                assert_true(next + 16 + 16 * areas <= r.len);
                for (uint32_t a = 0; a < areas; a++) {
                    uint64_t off = le64_at(r.payload + next + 16 + 16 * a), size = le64_at(r.payload + next + 24 + 16 * a);
                    assert_true(size > 0 && off + size <= ri.size && off + size > off);
                }
            }
            assert_true(h.next == 0 || h.next > next);
            next = h.next;
        }
        if (ri.flags & VU_REGION_FLAG_MMAP) {
            assert_int_equal(r.nfds, 1);
            void *p = mmap(NULL, ri.size, PROT_READ, MAP_SHARED, r.fds[0], (off_t)ri.offset);
            assert_true(p != MAP_FAILED);
            munmap(p, ri.size);
        }
        reply_free(&r);
    }
}

/* §6: a region the profile types carries exactly that TYPE capability (id 2,
   version 1); a region the profile lists without one carries none. */
static void region_info_type_capability(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    int checked = 0;
    for (uint32_t i = 0; i < n && i < PROFILE_MAX_REGIONS; i++) {
        const struct region_expect *e = &g_profile.regions[i];
        if (!e->present) continue;
        struct reply r;
        assert_int_equal(region_info(c, i, 4096, &r), 0);
        struct vu_region_info ri;
        memcpy(&ri, r.payload, 32);
        int found = 0;
        uint32_t next = (ri.flags & VU_REGION_FLAG_CAPS) ? ri.cap_offset : 0;
        for (int hops = 0; next && hops < 16; hops++) {
            assert_true(next >= 32 && next + 8 <= r.len);
            struct vu_cap_header h;
            memcpy(&h, r.payload + next, sizeof(h));
            if (h.id == VU_CAP_TYPE) {
                assert_true(next + 16 <= r.len);
                assert_int_equal(h.version, 1);
                assert_int_equal(le32_at(r.payload + next + 8), e->type);
                assert_int_equal(le32_at(r.payload + next + 12), e->subtype);
                found++;
            }
            next = h.next;
        }
        assert_int_equal(found, e->has_type ? 1 : 0);
        checked++;
        reply_free(&r);
    }
    skip_unless(checked > 0);
}

static void region_info_bad_index(void **state) {
    CONN;
    struct vu_region_info in = { .argsz = 32, .index = num_regions(c) };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_INFO, &in, sizeof(in), EINVAL);
    in.index = 0xffffffff;
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_INFO, &in, sizeof(in), EINVAL);
}

static void region_info_short(void **state) {
    CONN;
    struct vu_region_info in = { .argsz = 32, .index = 0 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_INFO, &in, 12, EINVAL);
}

static void region_info_bad_argsz(void **state) {
    CONN;
    struct vu_region_info in = { .argsz = 16, .index = 0 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_INFO, &in, sizeof(in), EINVAL);
}

/* §7: umdev lists no ioeventfds. */
static void region_io_fds_valid(void **state) {
    CONN;
    struct vu_region_io_fds in = { .argsz = 16, .index = VU_PCI_CONFIG_REGION };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_REGION_IO_FDS, 0, &in, sizeof(in), NULL, 0, &r), 0);
    assert_true(r.len >= 16);
    assert_int_equal(le32_at(r.payload + 12), 0);
    assert_int_equal(r.nfds, 0);
    reply_free(&r);
}

static void region_io_fds_bad_index(void **state) {
    CONN;
    struct vu_region_io_fds in = { .argsz = 16, .index = 1000 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_IO_FDS, &in, sizeof(in), EINVAL);
}

static void region_io_fds_bad_flags(void **state) {
    CONN;
    struct vu_region_io_fds in = { .argsz = 16, .flags = 1, .index = 0 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_IO_FDS, &in, sizeof(in), EINVAL);
}

/* §8: every index answers with EVENTFD and the profile's counts; --strict:
   INTx, when present, is maskable and automasked (Protocol/README.md §8). */
static void irq_info_every_index(void **state) {
    CONN;
    for (uint32_t i = 0; i < 5; i++) {
        struct vu_irq_info in = { .argsz = 16, .index = i }, out;
        struct reply r;
        assert_int_equal(request(c, VU_DEVICE_GET_IRQ_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
        assert_int_equal(r.len, 16);
        memcpy(&out, r.payload, 16);
        reply_free(&r);
        assert_int_equal(out.index, i);
        assert_true(out.flags & VU_IRQ_INFO_EVENTFD);
        if (g_profile.irq_count[i] >= 0) assert_int_equal(out.count, (uint32_t)g_profile.irq_count[i]);
        if (g_strict && i == VU_PCI_INTX_IRQ && out.count > 0)
            assert_int_equal(out.flags & (VU_IRQ_INFO_MASKABLE | VU_IRQ_INFO_AUTOMASKED), VU_IRQ_INFO_MASKABLE | VU_IRQ_INFO_AUTOMASKED);
        if (i == VU_PCI_ERR_IRQ || i == VU_PCI_REQ_IRQ) assert_true(out.count <= 1);
    }
}

static void irq_info_bad_index(void **state) {
    CONN;
    struct vu_irq_info in = { .argsz = 16, .index = 5 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_IRQ_INFO, &in, sizeof(in), EINVAL);
}

static void irq_info_short(void **state) {
    CONN;
    struct vu_irq_info in = { .argsz = 16, .index = 0 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_IRQ_INFO, &in, 8, EINVAL);
}

static void irq_info_bad_argsz(void **state) {
    CONN;
    struct vu_irq_info in = { .argsz = 4, .index = 0 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_IRQ_INFO, &in, sizeof(in), EINVAL);
}


/* ---- more of libvfio-user's test_device_get_*_info.py and the argsz rules ---- */

static struct vu_region_info get_region(struct conn *c, uint32_t index, uint32_t argsz, struct reply *keep) {
    struct reply r;
    assert_int_equal(region_info(c, index, argsz, &r), 0);
    assert_true(r.len >= 32);
    struct vu_region_info ri;
    memcpy(&ri, r.payload, 32);
    if (keep) *keep = r; else reply_free(&r);
    return ri;
}

/* argsz larger than the reply needs: the reply is no longer than argsz and
   says the size it needed (test_device_get_region_info_larger_argsz). */
static void region_info_argsz_larger(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        struct vu_region_info ri = get_region(c, i, 4096, &r);
        assert_true(r.len <= 4096);
        assert_true(ri.argsz <= 4096 ? r.len == ri.argsz : r.len <= 4096);
        assert_int_equal(ri.index, i);
        reply_free(&r);
    }
}

/* An absent region (size 0) offers nothing: no flags, no descriptor
   (test_device_get_region_info_zero_sized_region). */
static void region_info_absent_offers_nothing(void **state) {
    CONN;
    uint32_t n = num_regions(c), absent = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        struct vu_region_info ri = get_region(c, i, 4096, &r);
        if (ri.size == 0) {
            absent++;
            assert_int_equal(ri.flags & (VU_REGION_FLAG_READ | VU_REGION_FLAG_WRITE | VU_REGION_FLAG_MMAP), 0);
            assert_int_equal(r.nfds, 0);
        }
        reply_free(&r);
    }
    skip_because(absent > 0, "every region of the device has a size");
}

/* A region that cannot be mapped comes without a descriptor. */
static void region_info_no_fd_without_mmap(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        struct vu_region_info ri = get_region(c, i, 4096, &r);
        if (!(ri.flags & VU_REGION_FLAG_MMAP)) assert_int_equal(r.nfds, 0);
        reply_free(&r);
    }
}

/* Without the CAPS flag cap_offset is 0; with it, it points past the
   fixed structure and inside the reply. */
static void region_info_cap_offset_rules(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        struct vu_region_info ri = get_region(c, i, 4096, &r);
        if (ri.flags & VU_REGION_FLAG_CAPS) assert_true(ri.cap_offset >= 32 && ri.cap_offset + 8 <= r.len);
        else assert_int_equal(ri.cap_offset, 0);
        reply_free(&r);
    }
}

/* QEMU maps BARs: every BAR region that exists is a power of two (PCI sizes them so). */
static void region_info_bar_sizes_power_of_two(void **state) {
    CONN;
    for (uint32_t i = 0; i < 6; i++) {
        struct vu_region_info ri = get_region(c, i, 32, NULL);
        if (ri.size) assert_int_equal(ri.size & (ri.size - 1), 0);
    }
}

/* QEMU mmaps a mappable region's descriptor at the reply's offset: page aligned,
   and its sparse areas too. */
static void region_info_mmap_offsets_page_aligned(void **state) {
    CONN;
    uint32_t n = num_regions(c), mapped = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct reply r;
        struct vu_region_info ri = get_region(c, i, 4096, &r);
        if (ri.flags & VU_REGION_FLAG_MMAP) {
            mapped++;
            assert_int_equal(ri.offset % VU_PAGE_SIZE, 0);
            uint32_t at = ri.cap_offset;
            for (int hops = 0; (ri.flags & VU_REGION_FLAG_CAPS) && at && hops < 16; hops++) {
                assert_true(at + 8 <= r.len);
                struct vu_cap_header h;
                memcpy(&h, r.payload + at, sizeof(h));
                if (h.id == VU_CAP_SPARSE_MMAP) {
                    uint32_t count = le32_at(r.payload + at + 8);
                    for (uint32_t k = 0; k < count && at + 16 + 16 * (k + 1) <= r.len; k++) {
                        assert_int_equal(le64_at(r.payload + at + 16 + 16 * k) % VU_PAGE_SIZE, 0);
                        assert_int_equal(le64_at(r.payload + at + 24 + 16 * k) % VU_PAGE_SIZE, 0);
                    }
                }
                at = h.next;
            }
        }
        reply_free(&r);
    }
    skip_because(mapped > 0, "no region of the device can be mapped");
}

/* The config region reads and writes (QEMU forwards guest config cycles). */
static void region_info_config_read_write(void **state) {
    CONN;
    struct vu_region_info ri = get_region(c, VU_PCI_CONFIG_REGION, 32, NULL);
    assert_true(ri.size >= 256);
    assert_true(ri.flags & VU_REGION_FLAG_READ);
    assert_true(ri.flags & VU_REGION_FLAG_WRITE);
}

/* The same question twice gets the same answer. */
static void region_info_stable(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    for (uint32_t i = 0; i < n; i++) {
        struct vu_region_info a = get_region(c, i, 32, NULL), b = get_region(c, i, 32, NULL);
        assert_memory_equal(&a, &b, 32);
    }
}

/* One past the last region, and the largest index, are refused. */
static void region_info_index_edges(void **state) {
    CONN;
    uint32_t n = num_regions(c);
    struct vu_region_info in = { .argsz = 32, .index = n };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_INFO, &in, sizeof(in), EINVAL);
    in.index = UINT32_MAX;
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_INFO, &in, sizeof(in), EINVAL);
}

/* argsz larger than the request it came in: fine (it bounds the reply). */
static void device_info_argsz_larger(void **state) {
    CONN;
    struct vu_device_info in = { .argsz = 4096 };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    assert_int_equal(r.len, 16);
    assert_int_equal(le32_at(r.payload), 16);
    reply_free(&r);
}

/* The same answer every time, and flags with no bits the spec lacks. */
static void device_info_stable(void **state) {
    CONN;
    struct vu_device_info in = { .argsz = 16 };
    uint8_t first[16];
    for (int i = 0; i < 3; i++) {
        struct reply r;
        assert_int_equal(request(c, VU_DEVICE_GET_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
        if (i == 0) memcpy(first, r.payload, 16); else assert_memory_equal(first, r.payload, 16);
        reply_free(&r);
    }
}

/* argsz larger than 16: the reply is 16 bytes with argsz 16. */
static void irq_info_argsz_larger(void **state) {
    CONN;
    struct vu_irq_info in = { .argsz = 64, .index = VU_PCI_ERR_IRQ };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_IRQ_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
    assert_int_equal(r.len, 16);
    assert_int_equal(le32_at(r.payload), 16);
    reply_free(&r);
}

/* test_device_get_irq_info_bad_in: the largest index, and flags set in the request. */
static void irq_info_bad_in(void **state) {
    CONN;
    struct vu_irq_info in = { .argsz = 16, .index = UINT32_MAX };
    EXPECT_ERRNO(c, VU_DEVICE_GET_IRQ_INFO, &in, sizeof(in), EINVAL);
}

/* The extra payload after the 16 bytes. */
static void irq_info_oversized(void **state) {
    CONN;
    uint8_t p[32] = { 16, 0, 0, 0, 0, 0, 0, 0, 0 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_IRQ_INFO, p, sizeof(p), EINVAL);
}

/* Every index's reply has no descriptor and no unknown flag. */
static void irq_info_flags_known(void **state) {
    CONN;
    for (uint32_t i = 0; i < 5; i++) {
        struct vu_irq_info in = { .argsz = 16, .index = i };
        struct reply r;
        assert_int_equal(request(c, VU_DEVICE_GET_IRQ_INFO, 0, &in, sizeof(in), NULL, 0, &r), 0);
        assert_int_equal(r.nfds, 0);
        assert_int_equal(le32_at(r.payload + 4) & ~(VU_IRQ_INFO_EVENTFD | VU_IRQ_INFO_MASKABLE | VU_IRQ_INFO_AUTOMASKED | VU_IRQ_INFO_NORESIZE), 0);
        reply_free(&r);
    }
}

/* test_device_get_region_io_fds_bad_count: count must be 0 in a request. */
static void region_io_fds_count_in_request(void **state) {
    CONN;
    struct vu_region_io_fds in = { .argsz = 16, .index = VU_PCI_CONFIG_REGION, .count = 1 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_IO_FDS, &in, sizeof(in), EINVAL);
}

/* test_device_get_region_io_fds_buffer_too_small: argsz below the fixed part. */
static void region_io_fds_small_argsz(void **state) {
    CONN;
    struct vu_region_io_fds in = { .argsz = 8, .index = VU_PCI_CONFIG_REGION };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_IO_FDS, &in, sizeof(in), EINVAL);
}

/* test_device_get_region_io_fds_buffer_too_large: a large argsz bounds the
   reply; the reply's argsz says what it needs. */
static void region_io_fds_large_argsz(void **state) {
    CONN;
    struct vu_region_io_fds in = { .argsz = 4096, .index = VU_PCI_CONFIG_REGION };
    struct reply r;
    assert_int_equal(request(c, VU_DEVICE_GET_REGION_IO_FDS, 0, &in, sizeof(in), NULL, 0, &r), 0);
    assert_true(r.len >= 16 && r.len <= 4096);
    assert_true(le32_at(r.payload) >= 16);
    reply_free(&r);
}

/* Short request. */
static void region_io_fds_short(void **state) {
    CONN;
    uint8_t p[8] = { 16 };
    EXPECT_ERRNO(c, VU_DEVICE_GET_REGION_IO_FDS, p, sizeof(p), EINVAL);
}

const struct check info_checks[] = {
    SPEC(device_info_valid, "§5"),
    SPEC(device_info_short, "§5"),
    OPTIONAL(device_info_oversized, "§5", "strict"),
    SPEC(device_info_bad_argsz, "§5"),
    SPEC(region_info_every_index, "§6"),
    { "region_info_argsz_retry", region_info_argsz_retry, setup_open, teardown_conn, CLASS_QEMU, "§6", "mmap" },
    { "region_info_caps_and_fd", region_info_caps_and_fd, setup_open, teardown_conn, CLASS_SPEC, "§6", "mmap" },
    OPTIONAL(region_info_type_capability, "§6", "profile"),
    SPEC(region_info_bad_index, "§6"),
    SPEC(region_info_short, "§6"),
    SPEC(region_info_bad_argsz, "§6"),
    OPTIONAL(region_io_fds_valid, "§7", "region_io_fds"),
    OPTIONAL(region_io_fds_bad_index, "§7", "region_io_fds"),
    OPTIONAL(region_io_fds_bad_flags, "§7", "region_io_fds"),
    SPEC(irq_info_every_index, "§8"),
    SPEC(irq_info_bad_index, "§8"),
    SPEC(irq_info_short, "§8"),
    SPEC(irq_info_bad_argsz, "§8"),
    SPEC(region_info_argsz_larger, "§6"),
    SPEC(region_info_absent_offers_nothing, "§6"),
    SPEC(region_info_no_fd_without_mmap, "§6"),
    SPEC(region_info_cap_offset_rules, "§6"),
    QEMU(region_info_bar_sizes_power_of_two, "§6"),
    { "region_info_mmap_offsets_page_aligned", region_info_mmap_offsets_page_aligned, setup_open, teardown_conn, CLASS_QEMU, "§6", "mmap" },
    QEMU(region_info_config_read_write, "§17"),
    SPEC(region_info_stable, "§6"),
    SPEC(region_info_index_edges, "§6"),
    SPEC(device_info_argsz_larger, "§5"),
    SPEC(device_info_stable, "§5"),
    SPEC(irq_info_argsz_larger, "§8"),
    SPEC(irq_info_bad_in, "§8"),
    OPTIONAL(irq_info_oversized, "§8", "strict"),
    SPEC(irq_info_flags_known, "§8"),
    OPTIONAL(region_io_fds_count_in_request, "§7", "region_io_fds"),
    OPTIONAL(region_io_fds_small_argsz, "§7", "region_io_fds"),
    OPTIONAL(region_io_fds_large_argsz, "§7", "region_io_fds"),
    OPTIONAL(region_io_fds_short, "§7", "region_io_fds"),
};
const size_t info_checks_count = COUNT_OF(info_checks);
