/*
 * vfio-user-conformance: checks any vfio-user server against Protocol/README.md
 * and the vfio-user specification.
 *
 *   vfio-user-conformance --socket PATH [--display-socket PATH] [--profile FILE] [--list]
 *
 * Every check uses a fresh connection. Output is cmocka's summary.
 */
#include "suite.h"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct profile g_profile;
const char *g_socket;
const char *g_display_socket;

int setup_open(void **state) {
    struct conn *c = calloc(1, sizeof(*c));
    c->fd = -1;
    *state = c;
    conn_open(c);
    return 0;
}

int setup_raw(void **state) {
    struct conn *c = calloc(1, sizeof(*c));
    *state = c;
    return conn_open_raw(c);
}

int teardown_conn(void **state) {
    struct conn *c = *state;
    if (c) { conn_close(c); free(c); }
    return 0;
}

static int get_int(json_object *o, const char *key, int fallback) {
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? (int)json_object_get_int64(v) : fallback;
}

static void parse_access(json_object *o, struct reg_access *a) {
    if (!o) return;
    a->present = 1;
    a->region = (uint32_t)get_int(o, "region", 0);
    a->offset = (uint64_t)get_int(o, "offset", 0);
    a->width = (uint32_t)get_int(o, "width", 1);
    json_object *v;
    a->value = json_object_object_get_ex(o, "value", &v) ? (uint64_t)json_object_get_int64(v) : (uint64_t)-1;
}

/* The profile format is documented in Protocol/README.md §20. */
static int load_profile(const char *path) {
    json_object *doc = json_object_from_file(path);
    if (!doc || !json_object_is_type(doc, json_type_object)) {
        fprintf(stderr, "vfio-user-conformance: cannot parse profile %s: %s\n", path, json_util_get_last_err());
        return -1;
    }
    g_profile.have = 1;
    json_object *v, *o;
    if (json_object_object_get_ex(doc, "name", &v)) snprintf(g_profile.name, sizeof(g_profile.name), "%s", json_object_get_string(v));
    g_profile.vendor_id = get_int(doc, "vendor_id", -1);
    g_profile.device_id = get_int(doc, "device_id", -1);
    g_profile.class_code = get_int(doc, "class_code", -1);
    g_profile.num_regions = get_int(doc, "num_regions", -1);
    if (json_object_object_get_ex(doc, "reset", &v)) g_profile.reset = json_object_get_boolean(v);
    if (json_object_object_get_ex(doc, "migration", &v)) g_profile.migration = json_object_get_boolean(v);
    if (json_object_object_get_ex(doc, "regions", &o)) {
        json_object_object_foreach(o, key, val) {
            int i = atoi(key);
            if (i < 0 || i >= PROFILE_MAX_REGIONS) continue;
            struct region_expect *e = &g_profile.regions[i];
            e->present = 1;
            e->size = (uint64_t)get_int(val, "size", 0);
            json_object *m;
            e->mmap = json_object_object_get_ex(val, "mmap", &m) && json_object_get_boolean(m);
            if (json_object_object_get_ex(val, "type", &m) && json_object_is_type(m, json_type_array)
                && json_object_array_length(m) == 2) {
                e->has_type = 1;
                e->type = (uint32_t)json_object_get_int64(json_object_array_get_idx(m, 0));
                e->subtype = (uint32_t)json_object_get_int64(json_object_array_get_idx(m, 1));
            }
        }
    }
    if (json_object_object_get_ex(doc, "irqs", &o) && json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o) && i < 5; i++)
            g_profile.irq_count[i] = (int)json_object_get_int(json_object_array_get_idx(o, i));
    }
    if (json_object_object_get_ex(doc, "scratch", &o)) parse_access(o, &g_profile.scratch);
    if (json_object_object_get_ex(doc, "intx_raise", &o) && json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o) && i < 8; i++)
            parse_access(json_object_array_get_idx(o, i), &g_profile.intx_raise[g_profile.intx_raise_count++]);
    }
    if (json_object_object_get_ex(doc, "intx_clear", &o)) parse_access(o, &g_profile.intx_clear);
    if (json_object_object_get_ex(doc, "echo_write", &o)) parse_access(o, &g_profile.echo_write);
    if (json_object_object_get_ex(doc, "echo_read", &o)) parse_access(o, &g_profile.echo_read);
    if (json_object_object_get_ex(doc, "display", &v)) {
        const char *d = json_object_get_string(v);
        if (!strcmp(d, "region")) g_profile.display = VU_GFX_PLANE_TYPE_REGION;
        else if (!strcmp(d, "dmabuf")) g_profile.display = VU_GFX_PLANE_TYPE_DMABUF;
        else if (!strcmp(d, "none")) g_profile.display = PROFILE_DISPLAY_NONE;
        else { fprintf(stderr, "vfio-user-conformance: display must be region, dmabuf or none\n"); return -1; }
    }
    if (json_object_object_get_ex(doc, "display_mode", &o) && json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o) && i < 32; i++)
            parse_access(json_object_array_get_idx(o, i), &g_profile.display_mode[g_profile.display_mode_count++]);
    }
    if (json_object_object_get_ex(doc, "display_plane", &o)) {
        g_profile.plane_width = get_int(o, "width", -1);
        g_profile.plane_height = get_int(o, "height", -1);
        g_profile.plane_stride = get_int(o, "stride", -1);
        g_profile.plane_fourcc = (uint32_t)get_int(o, "fourcc", VU_DRM_FORMAT_XRGB8888);
    }
    json_object_put(doc);
    return 0;
}

struct group { const char *name; const struct CMUnitTest *tests; const size_t *count; };

int main(int argc, char **argv) {
    const char *profile = NULL;
    int list = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--socket") && i + 1 < argc) g_socket = argv[++i];
        else if (!strcmp(argv[i], "--profile") && i + 1 < argc) profile = argv[++i];
        else if (!strcmp(argv[i], "--display-socket") && i + 1 < argc) g_display_socket = argv[++i];
        else if (!strcmp(argv[i], "--list")) list = 1;
        else {
            fprintf(stderr, "usage: %s --socket PATH [--display-socket PATH] [--profile FILE] [--list]\n", argv[0]);
            return 2;
        }
    }
    memset(&g_profile, 0, sizeof(g_profile));
    g_profile.vendor_id = g_profile.device_id = g_profile.class_code = g_profile.reset = g_profile.migration = -1;
    g_profile.num_regions = -1;
    g_profile.plane_width = g_profile.plane_height = g_profile.plane_stride = -1;
    for (int i = 0; i < 5; i++) g_profile.irq_count[i] = -1;
    if (profile && load_profile(profile) != 0) return 2;

    const struct group groups[] = {
        { "version (§3)", version_tests, &version_tests_count },
        { "framing and header (§1, §2, §16)", header_tests, &header_tests_count },
        { "device, region and irq info (§5–§8)", info_tests, &info_tests_count },
        { "set irqs (§9)", irq_tests, &irq_tests_count },
        { "region access and reset (§10, §11, §13)", access_tests, &access_tests_count },
        { "dma map/unmap (§4)", dma_tests, &dma_tests_count },
        { "pci config space (§17)", config_tests, &config_tests_count },
        { "migration (§14, §15)", migration_tests, &migration_tests_count },
        { "device profile (§20)", device_tests, &device_tests_count },
        { "display planes and the display socket (§22, §23)", plane_tests, &plane_tests_count },
    };
    if (list) {
        size_t total = 0;
        for (size_t g = 0; g < COUNT_OF(groups); g++) {
            printf("%s\n", groups[g].name);
            for (size_t i = 0; i < *groups[g].count; i++) printf("  %s\n", groups[g].tests[i].name);
            total += *groups[g].count;
        }
        printf("%zu checks\n", total);
        return 0;
    }
    if (!g_socket) {
        fprintf(stderr, "vfio-user-conformance: --socket is required\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int failed = 0;
    for (size_t g = 0; g < COUNT_OF(groups); g++)
        failed += _cmocka_run_group_tests(groups[g].name, groups[g].tests, *groups[g].count, NULL, NULL);
    return failed ? 1 : 0;
}
