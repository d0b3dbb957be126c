/*
 * vfio-user-conformance: checks any vfio-user server against Protocol/README.md
 * and the vfio-user specification.
 *
 *   vfio-user-conformance --socket PATH | --server-cmd 'CMD [{socket}]'
 *                         [--profile FILE] [--display-socket PATH] [--timeout SECONDS]
 *                         [--only PATTERN]... [--skip PATTERN]... [--junit FILE] [--quiet] [--list]
 *
 * Every check runs in a child process on a fresh connection; see runner.c
 * and Tests/Conformance/README.md.
 */
#define _GNU_SOURCE
#include "suite.h"
#include "runner.h"
#include <errno.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct profile g_profile;
const char *g_socket;
const char *g_display_socket;
int g_timeout_ms = 5000;
int g_strict;
int g_one_shot;
int g_in_check;

static void fixture_failed(struct conn *c, const char *path) {
    char m[300];
    snprintf(m, sizeof(m), NO_SERVER_MARK " at %s", path);
    (void)c;
    fail_msg("%s", m);
}

int setup_open(void **state) {
    struct conn *c = calloc(1, sizeof(*c));
    c->fd = -1;
    *state = c;
    if (conn_open_raw(c) != 0) fixture_failed(c, g_socket);
    conn_handshake(c);
    return 0;
}

int setup_raw(void **state) {
    struct conn *c = calloc(1, sizeof(*c));
    *state = c;
    if (conn_open_raw(c) != 0) fixture_failed(c, g_socket);
    return 0;
}

int teardown_conn(void **state) {
    struct conn *c = *state;
    if (c) { conn_close(c); free(c); }
    return 0;
}

void skip_because(int condition, const char *reason) {
    if (condition) return;
    printf(SKIP_REASON_PREFIX "%s\n", reason);
    fflush(stdout);
    skip();
}

void skip_unless(int condition) { skip_because(condition, "the device lacks what this check needs"); }

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
    if (json_object_object_get_ex(doc, "strict", &v) && json_object_get_boolean(v)) g_strict = 1;
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

static const struct { const struct check *checks; const size_t *count; } tables[] = {
    { version_checks, &version_checks_count },
    { header_checks, &header_checks_count },
    { info_checks, &info_checks_count },
    { irq_checks, &irq_checks_count },
    { access_checks, &access_checks_count },
    { dma_checks, &dma_checks_count },
    { config_checks, &config_checks_count },
    { migration_checks, &migration_checks_count },
    { device_checks, &device_checks_count },
    { plane_checks, &plane_checks_count },
};

static void usage(FILE *f) {
    fprintf(f,
        "usage: vfio-user-conformance (--socket PATH | --server-cmd 'CMD [ARGS] [{socket}]') [options]\n"
        "  --socket PATH          the server's UNIX socket (with --server-cmd: where it is told to listen)\n"
        "  --server-cmd CMD       start the server with CMD ({socket} replaced by the socket path, else\n"
        "                         appended) and start it again whenever a check leaves it dead\n"
        "  --server-log FILE      the started server's output (default: discarded)\n"
        "  --profile FILE         what the device is (Tests/Conformance/README.md): enables its checks\n"
        "  --display-socket PATH  umdev's display socket for the device (Protocol/README.md §23)\n"
        "  --timeout SECONDS      longest wait for one reply (default 5); a check gets twice that plus 1 s\n"
        "  --only PATTERN         run only checks whose name matches (shell pattern); repeatable\n"
        "  --skip PATTERN         leave out checks whose name matches; repeatable\n"
        "  --junit FILE           write a JUnit XML report\n"
        "  --strict               also hold the server to the rules Protocol/README.md adds to the spec:\n"
        "                         the documented errnos, and the checks that need \"strict\"\n"
        "  --quiet                print failures, skips and the summary only\n"
        "  --list                 list the checks with their class and section, and exit\n");
}

static int matches_any(const char *name, char **patterns, int n) {
    for (int i = 0; i < n; i++) if (fnmatch(patterns[i], name, 0) == 0) return 1;
    return 0;
}

int main(int argc, char **argv) {
    const char *profile = NULL;
    int list = 0;
    struct options opt = { .timeout_ms = 5000 };
    char **only = calloc((size_t)argc, sizeof(char *)), **skips = calloc((size_t)argc, sizeof(char *));
    int n_only = 0, n_skip = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--socket") && has) opt.socket = argv[++i];
        else if (!strcmp(a, "--server-cmd") && has) opt.server_cmd = argv[++i];
        else if (!strcmp(a, "--server-log") && has) opt.server_log = argv[++i];
        else if (!strcmp(a, "--profile") && has) profile = argv[++i];
        else if (!strcmp(a, "--display-socket") && has) g_display_socket = argv[++i];
        else if (!strcmp(a, "--junit") && has) opt.junit = argv[++i];
        else if (!strcmp(a, "--only") && has) only[n_only++] = argv[++i];
        else if (!strcmp(a, "--skip") && has) skips[n_skip++] = argv[++i];
        else if (!strcmp(a, "--timeout") && has) {
            char *end;
            double t = strtod(argv[++i], &end);
            if (*end || !(t > 0 && t <= 600)) { fprintf(stderr, "vfio-user-conformance: --timeout takes 0 to 600 seconds\n"); return 2; }
            opt.timeout_ms = (int)(t * 1000);
        }
        else if (!strcmp(a, "--quiet")) opt.quiet = 1;
        else if (!strcmp(a, "--strict")) g_strict = 1;
        else if (!strcmp(a, "--list")) list = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else { usage(stderr); return 2; }
    }
    memset(&g_profile, 0, sizeof(g_profile));
    g_profile.vendor_id = g_profile.device_id = g_profile.class_code = g_profile.reset = g_profile.migration = -1;
    g_profile.num_regions = -1;
    g_profile.plane_width = g_profile.plane_height = g_profile.plane_stride = -1;
    for (int i = 0; i < 5; i++) g_profile.irq_count[i] = -1;
    if (profile && load_profile(profile) != 0) return 2;

    size_t total = 0;
    for (size_t t = 0; t < COUNT_OF(tables); t++) total += *tables[t].count;
    const struct check **selected = calloc(total, sizeof(*selected));
    size_t n = 0;
    for (size_t t = 0; t < COUNT_OF(tables); t++)
        for (size_t i = 0; i < *tables[t].count; i++) {
            const struct check *k = &tables[t].checks[i];
            if (n_only && !matches_any(k->name, only, n_only)) continue;
            if (n_skip && matches_any(k->name, skips, n_skip)) continue;
            selected[n++] = k;
        }
    if (list) {
        size_t per[CLASS_COUNT] = { 0 };
        for (size_t i = 0; i < n; i++) {
            const struct check *k = selected[i];
            per[k->klass]++;
            printf("%-8s  %-4s  %s%s%s%s\n", class_names[k->klass], k->section, k->name,
                   k->needs ? "  (needs " : "", k->needs ? k->needs : "", k->needs ? ")" : "");
        }
        printf("%zu checks: %zu spec, %zu qemu, %zu optional\n", n, per[CLASS_SPEC], per[CLASS_QEMU], per[CLASS_OPTIONAL]);
        return 0;
    }
    static char generated[108];
    if (!opt.socket && opt.server_cmd) {
        snprintf(generated, sizeof(generated), "/tmp/vfio-user-conformance-%d.sock", (int)getpid());
        opt.socket = generated;
    }
    if (!opt.socket) {
        fprintf(stderr, "vfio-user-conformance: give --socket PATH (a running server) or --server-cmd CMD\n");
        return 2;
    }
    if (n == 0) { fprintf(stderr, "vfio-user-conformance: no check matches --only/--skip\n"); return 2; }
    g_socket = opt.socket;
    g_timeout_ms = opt.timeout_ms;
    opt.name = g_profile.have && g_profile.name[0] ? g_profile.name : "vfio-user-conformance";
    signal(SIGPIPE, SIG_IGN);
    return run_checks(selected, n, &opt);
}
