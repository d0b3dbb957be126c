/* What the server under test offers, learnt once before the checks run,
   and the feature names optional checks ask for (README.md, "Classes"). */
#include "suite.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct facts g_facts;

/* QEMU's capabilities, as recorded from a real QEMU (the same conn_open offers). */
extern const char *qemu_caps;

static int quiet_version(struct conn *c, const char *json, json_object **caps_out) {
    struct reply r;
    if (version_with(c, 0, 0, json, &r) != 0) return -1;
    int ok = r.len > 4 && r.payload[r.len - 1] == 0;
    json_object *doc = ok ? json_tokener_parse((const char *)r.payload + 4) : NULL;
    reply_free(&r);
    if (!doc) return -1;
    json_object *caps;
    if (json_object_object_get_ex(doc, "capabilities", &caps) && caps_out) *caps_out = json_object_get(caps);
    json_object_put(doc);
    return 0;
}

/* One connection: VERSION as QEMU sends it, DEVICE_GET_INFO, every region's
   and IRQ index's info, config space's status register. Nothing here
   changes the device. Returns 0 when the server could be reached. */
int discover(const char *path) {
    memset(&g_facts, 0, sizeof(g_facts));
    for (int i = 0; i < 5; i++) g_facts.irq_count[i] = -1;
    struct conn c;
    if (conn_open_path(&c, path) != 0) return -1;
    g_facts.reachable = 1;
    json_object *caps = NULL;
    /* QEMU's capabilities and umdev's plane key: a server that does not
       know the key ignores it (the reply is a subset of the proposal). */
    static const char *discovery_caps =
        "{\"capabilities\": {\"pgsizes\": 4096, \"max_msg_fds\": 16, \"max_dma_maps\": 65535, "
        "\"max_data_xfer_size\": 1048576, \"migration\": {\"max_bitmap_size\": 268435456, \"pgsize\": 4096}, "
        "\"write_multiple\": true, \"" VU_GFX_PLANE_CAPABILITY "\": {\"version\": 1}}}";
    if (quiet_version(&c, discovery_caps, &caps) == 0) {
        g_facts.handshake = 1;
        json_object *v;
        if (caps) {
            g_facts.migration = json_object_object_get_ex(caps, "migration", &v);
            if (json_object_object_get_ex(caps, "write_multiple", &v)) g_facts.write_multiple = json_object_get_boolean(v);
            g_facts.gfx_plane = json_object_object_get_ex(caps, VU_GFX_PLANE_CAPABILITY, &v);
            json_object_put(caps);
        }
        struct vu_device_info info = { .argsz = sizeof(info) };
        struct reply r;
        if (request(&c, VU_DEVICE_GET_INFO, 0, &info, sizeof(info), NULL, 0, &r) == 0 && r.len >= sizeof(info)) {
            memcpy(&info, r.payload, sizeof(info));
            g_facts.info = 1;
            g_facts.device_flags = info.flags;
            g_facts.num_regions = info.num_regions;
            g_facts.num_irqs = info.num_irqs;
        }
        if (g_facts.info) reply_free(&r);
        for (uint32_t i = 0; g_facts.info && i < g_facts.num_regions && i < 64; i++) {
            if (region_info(&c, i, 32, &r) != 0) continue;
            if (r.len >= 32) {
                uint32_t flags = le32_at(r.payload + 4);
                if (flags & VU_REGION_FLAG_MMAP) g_facts.mmap = 1;
                if (i == VU_PCI_CONFIG_REGION) g_facts.config_size = le64_at(r.payload + 16);
            }
            reply_free(&r);
        }
        for (uint32_t i = 0; g_facts.info && i < g_facts.num_irqs && i < 5; i++) {
            struct vu_irq_info q = { .argsz = sizeof(q), .index = i };
            if (request(&c, VU_DEVICE_GET_IRQ_INFO, 0, &q, sizeof(q), NULL, 0, &r) == 0) {
                if (r.len >= sizeof(q)) g_facts.irq_count[i] = (int)le32_at(r.payload + 12);
                reply_free(&r);
            }
        }
        uint8_t status[2];
        if (g_facts.config_size >= 64 && region_read(&c, VU_PCI_CONFIG_REGION, 6, 2, status) == 0)
            g_facts.caps_list = (status[0] & 0x10) != 0;
        struct vu_region_io_fds io = { .argsz = sizeof(io), .index = VU_PCI_CONFIG_REGION };
        if (g_facts.num_regions > VU_PCI_CONFIG_REGION && request(&c, VU_DEVICE_GET_REGION_IO_FDS, 0, &io, sizeof(io), NULL, 0, &r) == 0) {
            g_facts.region_io_fds = 1;
            reply_free(&r);
        }
    }
    conn_close(&c);
    return 0;
}

/* Whether the server under test has `feature`; when not, *why says why. */
int has_feature(const char *f, const char **why) {
    static char reason[160];
    const char *no = NULL;
    if (!strcmp(f, "migration")) {
        if (!(g_facts.migration || g_profile.migration == 1)) no = "the server does not offer migration (no \"migration\" in its VERSION reply)";
    } else if (!strcmp(f, "write_multiple")) {
        if (!g_facts.write_multiple) no = "the server does not offer write_multiple";
    } else if (!strcmp(f, "reset")) {
        if (!((g_facts.device_flags & VU_DEVICE_FLAGS_RESET) || g_profile.reset == 1)) no = "the device does not advertise DEVICE_RESET";
    } else if (!strcmp(f, "intx") || !strcmp(f, "msi") || !strcmp(f, "msix") || !strcmp(f, "err") || !strcmp(f, "req")) {
        static const char *names[] = { "intx", "msi", "msix", "err", "req" };
        for (int i = 0; i < 5; i++)
            if (!strcmp(f, names[i]) && g_facts.irq_count[i] <= 0) {
                snprintf(reason, sizeof(reason), "the device has no %s vector", i == 0 ? "INTx" : i == 1 ? "MSI" : i == 2 ? "MSI-X" : i == 3 ? "ERR" : "REQ");
                no = reason;
            }
    } else if (!strcmp(f, "mmap")) {
        if (!g_facts.mmap) no = "no region of the device can be mapped";
    } else if (!strcmp(f, "region_io_fds")) {
        if (!g_facts.region_io_fds) no = "the server does not answer DEVICE_GET_REGION_IO_FDS";
    } else if (!strcmp(f, "pci_caps")) {
        if (!g_facts.caps_list) no = "the device's config space has no capability list";
    } else if (!strcmp(f, "profile")) {
        if (!g_profile.have) no = "no --profile describes the device";
    } else if (!strcmp(f, "profile_scratch")) {
        if (!g_profile.scratch.present) no = "the profile names no scratch register";
    } else if (!strcmp(f, "profile_intx")) {
        if (g_profile.intx_raise_count == 0) no = "the profile names no register writes that raise INTx";
    } else if (!strcmp(f, "profile_echo")) {
        if (!(g_profile.echo_write.present && g_profile.echo_read.present)) no = "the profile names no echo registers";
    } else if (!strcmp(f, "display")) {
        if (!g_facts.gfx_plane) no = "the server does not offer umdev's display-plane extension (" VU_GFX_PLANE_CAPABILITY ")";
        else if (!(g_profile.display == VU_GFX_PLANE_TYPE_REGION || g_profile.display == VU_GFX_PLANE_TYPE_DMABUF))
            no = "the profile does not say the device has a display";
    } else if (!strcmp(f, "display_known")) {
        if (!g_facts.gfx_plane) no = "the server does not offer umdev's display-plane extension (" VU_GFX_PLANE_CAPABILITY ")";
        else if (g_profile.display == 0) no = "the profile does not say whether the device has a display";
    } else if (!strcmp(f, "display_mode")) {
        if (!g_facts.gfx_plane) no = "the server does not offer umdev's display-plane extension (" VU_GFX_PLANE_CAPABILITY ")";
        else if (!((g_profile.display == VU_GFX_PLANE_TYPE_REGION || g_profile.display == VU_GFX_PLANE_TYPE_DMABUF)
              && g_profile.plane_width > 0))
            no = "the profile gives no register writes that set a display mode";
    } else if (!strcmp(f, "display_socket")) {
        if (!g_display_socket) no = "no --display-socket";
    } else if (!strcmp(f, "strict")) {
        if (!g_strict) no = "a rule of Protocol/README.md beyond the spec (--strict)";
    } else if (!strcmp(f, "plane_extension")) {
        if (!g_facts.gfx_plane) no = "the server does not offer umdev's display-plane extension (" VU_GFX_PLANE_CAPABILITY ")";
    } else {
        snprintf(reason, sizeof(reason), "unknown feature %s (a bug in the suite)", f);
        no = reason;
    }
    if (why) *why = no;
    return no == NULL;
}

void print_facts(FILE *out) {
    if (!g_facts.reachable) { fprintf(out, "server: not reachable\n"); return; }
    if (!g_facts.handshake) { fprintf(out, "server: refused QEMU's VERSION; optional features unknown\n"); return; }
    fprintf(out, "server: %u regions, %u irq indices, reset %s, migration %s, write_multiple %s, mmap %s, region_io_fds %s, display planes %s%s\n",
            g_facts.num_regions, g_facts.num_irqs, (g_facts.device_flags & VU_DEVICE_FLAGS_RESET) ? "yes" : "no",
            g_facts.migration ? "yes" : "no", g_facts.write_multiple ? "yes" : "no", g_facts.mmap ? "yes" : "no",
            g_facts.region_io_fds ? "yes" : "no", g_facts.gfx_plane ? "yes" : "no", g_strict ? "; strict" : "");
}
