/*
 * vfio-user conformance suite: shared declarations.
 *
 * Written from Protocol/README.md and the vfio-user specification only; it
 * shares no code with umdev's Swift server. Each check names the section
 * of Protocol/README.md (and the spec) it tests.
 */
#ifndef SUITE_H
#define SUITE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <setjmp.h>
#include <stdbool.h>
#include <cmocka.h>
#include <json-c/json.h>

#include "../../../Protocol/vfio-user-wire.h"

/* What --profile says about the device under test. */
/* Regions a profile can describe: the nine PCI ones and device-specific ones after them. */
#define PROFILE_MAX_REGIONS 32
struct region_expect {
    int present;
    uint64_t size;
    int mmap;
    int has_type;                 /* a TYPE capability is expected */
    uint32_t type, subtype;
};
struct reg_access { int present; uint32_t region; uint64_t offset; uint32_t width; uint64_t value; };
struct profile {
    char name[64];
    int have;                     /* a profile was given */
    int vendor_id, device_id;     /* -1 = not checked */
    int class_code;               /* -1 = not checked */
    int reset;                    /* -1 = not checked */
    int num_regions;              /* -1 = not checked */
    int migration;                /* -1 = not checked */
    struct region_expect regions[PROFILE_MAX_REGIONS];
    int irq_count[5];             /* -1 = not checked */
    struct reg_access scratch;    /* a read/write register */
    /* INTx: writes that raise it, then a write that clears it. */
    struct reg_access intx_raise[8];
    int intx_raise_count;
    struct reg_access intx_clear;
    /* Bytes written to `echo_write` come back from `echo_read` (mtty loopback). */
    struct reg_access echo_write, echo_read;
    /* Display planes (§22): 0 unknown, 1 none, VU_GFX_PLANE_TYPE_REGION or _DMABUF. */
    uint32_t display;
    /* Register writes (each with its value) that make the device show a plane,
       and the plane expected afterwards. */
    struct reg_access display_mode[32];
    int display_mode_count;
    int plane_width, plane_height, plane_stride; /* -1 = not checked */
    uint32_t plane_fourcc;
};
#define PROFILE_DISPLAY_NONE 1
extern struct profile g_profile;
extern const char *g_socket;
extern const char *g_display_socket;   /* --display-socket, or NULL */

/* A connection with its negotiated state. */
struct conn {
    int fd;
    uint16_t next_id;
    int server_write_multiple;
    int server_migration;
    uint32_t server_max_msg_fds;
    int server_gfx_plane;          /* the display-plane key was echoed */
};

struct reply {
    struct vu_header hdr;
    uint8_t *payload;       /* malloc'ed, hdr.msg_size - 16 bytes */
    uint32_t len;
    int fds[16];
    int nfds;
};

/* conn.c */
int conn_open_raw(struct conn *c);                 /* connect, no VERSION */
int conn_open_path(struct conn *c, const char *path);
void conn_open_planes(struct conn *c, const char *path); /* connect + VERSION offering §22 */
extern const char *plane_caps;
void conn_open(struct conn *c);                    /* connect + VERSION (asserts) */
void conn_handshake(struct conn *c);               /* VERSION with QEMU's capabilities (asserts) */
void conn_close(struct conn *c);
int send_msg(struct conn *c, uint16_t id, uint16_t cmd, uint32_t flags, const void *payload, size_t len,
             const int *fds, int nfds);
int send_bytes(struct conn *c, const void *bytes, size_t len, const int *fds, int nfds);
int recv_msg(struct conn *c, struct reply *r, int timeout_ms);  /* 0, RECV_TIMEOUT, or -1 (EOF, bad framing) */
#define RECV_TIMEOUT (-2)
void reply_free(struct reply *r);
/* Sends a command and waits for its reply. Returns 0 on success, the errno of an
   error reply, RECV_TIMEOUT when no reply came in time, or -1 when the
   connection failed or the reply was malformed. *r is filled when r != NULL. */
int request(struct conn *c, uint16_t cmd, uint32_t flags, const void *payload, size_t len,
            const int *fds, int nfds, struct reply *r);
/* What request() returns for an error reply whose errno field is 0. */
#define ERROR_WITHOUT_ERRNO 100000
/* request() with no reply kept. */
int req(struct conn *c, uint16_t cmd, const void *payload, size_t len);
void assert_alive(struct conn *c);                 /* a valid request still works */
int version_with(struct conn *c, uint16_t major, uint16_t minor, const char *json, struct reply *r);
int region_read(struct conn *c, uint32_t region, uint64_t offset, uint32_t count, void *out);
int region_write(struct conn *c, uint32_t region, uint64_t offset, uint32_t count, const void *data);
int region_info(struct conn *c, uint32_t index, uint32_t argsz, struct reply *r);
int set_irqs(struct conn *c, uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
             const int *fds, int nfds);
int new_eventfd(void);
uint64_t wait_eventfd(int fd, int timeout_ms);     /* counter, 0 if not signalled */
int dma_map(struct conn *c, uint32_t flags, uint64_t offset, uint64_t addr, uint64_t size, int fd);
int dma_unmap(struct conn *c, uint32_t flags, uint64_t addr, uint64_t size);
int feature(struct conn *c, uint32_t flags, const void *data, size_t len, uint32_t argsz, struct reply *r);
int set_state(struct conn *c, uint32_t state);
int get_state(struct conn *c, uint32_t *state);
int reg_write(struct conn *c, const struct reg_access *a, uint64_t value);
int reg_read(struct conn *c, const struct reg_access *a, uint64_t *value);
uint32_t le32_at(const uint8_t *p);
uint64_t le64_at(const uint8_t *p);
void skip_unless(int condition);   /* skip_because with a generic reason */

/* A check: a cmocka test with its fixture, its class and where it is specified. */
enum check_class { CLASS_SPEC, CLASS_QEMU, CLASS_OPTIONAL, CLASS_COUNT };
struct check {
    const char *name;
    CMUnitTestFunction test;
    CMFixtureFunction setup, teardown;
    enum check_class klass;
    const char *section;   /* Protocol/README.md section, e.g. "§3" */
    const char *needs;     /* the feature an optional check needs (see features.c), or NULL */
};
extern const char *const class_names[CLASS_COUNT];

/* Check tables, one per file. */
extern const struct check version_checks[];    extern const size_t version_checks_count;
extern const struct check header_checks[];     extern const size_t header_checks_count;
extern const struct check info_checks[];       extern const size_t info_checks_count;
extern const struct check irq_checks[];        extern const size_t irq_checks_count;
extern const struct check access_checks[];     extern const size_t access_checks_count;
extern const struct check dma_checks[];        extern const size_t dma_checks_count;
extern const struct check config_checks[];     extern const size_t config_checks_count;
extern const struct check migration_checks[];  extern const size_t migration_checks_count;
extern const struct check device_checks[];     extern const size_t device_checks_count;
extern const struct check plane_checks[];      extern const size_t plane_checks_count;

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Fixtures: each check gets a fresh connection in *state, closed by the
   teardown even when the check fails. setup_open negotiates VERSION with
   QEMU's capabilities; setup_raw only connects. */
int setup_open(void **state);
int setup_raw(void **state);
int teardown_conn(void **state);
#define SPEC(f, sec)              { #f, f, setup_open, teardown_conn, CLASS_SPEC, sec, NULL }
#define SPEC_RAW(f, sec)          { #f, f, setup_raw, teardown_conn, CLASS_SPEC, sec, NULL }
#define QEMU(f, sec)              { #f, f, setup_open, teardown_conn, CLASS_QEMU, sec, NULL }
#define QEMU_RAW(f, sec)          { #f, f, setup_raw, teardown_conn, CLASS_QEMU, sec, NULL }
#define OPTIONAL(f, sec, needs)   { #f, f, setup_open, teardown_conn, CLASS_OPTIONAL, sec, needs }
#define OPTIONAL_RAW(f, sec, needs) { #f, f, setup_raw, teardown_conn, CLASS_OPTIONAL, sec, needs }
#define CONN struct conn *c = (struct conn *)*state

/* Skips the running check, with the reason shown in the report, unless `condition` holds. */
void skip_because(int condition, const char *reason);
/* Whether the server under test has `feature` (features.c); *why says why not. */
int has_feature(const char *feature, const char **why);

/* What the server offers, learnt before the checks (features.c). */
struct facts {
    int reachable;          /* a connection was accepted */
    int handshake;          /* VERSION with QEMU's capabilities succeeded */
    int migration, write_multiple;
    int info;               /* DEVICE_GET_INFO answered */
    uint32_t device_flags, num_regions, num_irqs;
    int irq_count[5];       /* -1 unknown */
    int mmap;               /* some region can be mapped */
    uint64_t config_size;
    int caps_list;          /* config space has a capability list */
    int region_io_fds;      /* DEVICE_GET_REGION_IO_FDS is answered */
    int gfx_plane;          /* umdev's display-plane key was echoed (§22) */
};
extern struct facts g_facts;
int discover(const char *path);
void print_facts(FILE *out);

/* The server exits when its client leaves (found with --server-cmd): a
   check cannot open a second connection of its own. */
extern int g_one_shot;
/* Set in the child that runs a check (notes are printed there only). */
extern int g_in_check;

/* Per-request reply timeout (--timeout), in milliseconds. */
extern int g_timeout_ms;
/* The marker a fixture's failure message carries when the server did not
   accept a connection: the runner then looks at the server, not the check. */
#define NO_SERVER_MARK "cannot connect to the server"

/* The spec names few errnos (EEXIST for an overlapping DMA_MAP is one): it
   asks for an error reply. So an error case expects any error reply, and
   the errno Protocol/README.md documents only with --strict (or a
   profile's "strict": true), as umdev's own runs do. */
extern int g_strict;      /* --strict: Protocol/README.md's rules too */
#define assert_errno(rc, e) do { \
        int rc_ = (rc); \
        if (g_strict) assert_int_equal(rc_, (e)); \
        else if (rc_ <= 0) fail_msg("expected an error reply (Protocol/README.md documents %s), got %s", \
                                    strerror(e), rc_ == 0 ? "success" : "no valid reply"); \
    } while (0)

/* An error case: the request fails (with `e`, see assert_errno) and the connection lives on (§16). */
#define EXPECT_ERRNO(c, cmd, payload, len, e) do { \
        assert_errno(request((c), (cmd), 0, (payload), (len), NULL, 0, NULL), (e)); \
        assert_alive(c); \
    } while (0)

#endif
