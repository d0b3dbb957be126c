/* The runner's options (main.c parses them) and its entry point. */
#ifndef RUNNER_H
#define RUNNER_H
#include <stddef.h>

struct options {
    const char *socket;        /* the server's socket */
    const char *server_cmd;    /* how to start it, or NULL when it runs already */
    const char *server_log;    /* where its output goes (default /dev/null) */
    const char *junit;         /* JUnit XML report, or NULL */
    const char *name;          /* the suite's name in reports (the profile's, or the socket) */
    int timeout_ms;            /* per reply */
    int quiet;                 /* print failures, skips and the summary only */
};

/* A check's output line that carries why it skipped itself. */
#define SKIP_REASON_PREFIX "#skip-reason: "

/* Runs `checks` in order; 0 when none failed, 1 when some did, 2 when the
   server could not be reached or started at all. */
int run_checks(const struct check *const *checks, size_t n, const struct options *opt);
#endif
