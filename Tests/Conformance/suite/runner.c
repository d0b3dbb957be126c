/* Runs the checks: each in a child process of its own (so a check that
   hangs is stopped at --timeout and one that crashes takes nothing else
   with it), the server watched between checks and, with --server-cmd,
   started again when it dies. Reports a line per check, a summary per
   class, and optionally a JUnit file. */
#define _GNU_SOURCE
#include "suite.h"
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

const char *const class_names[CLASS_COUNT] = { "spec", "qemu", "optional" };

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the server, when the suite runs it (--server-cmd) ---- */

static pid_t server_pid = -1;
static int server_starts;

/* The command with {socket} replaced by the socket path, or the path appended. */
static char *server_command(const struct options *o) {
    const char *cmd = o->server_cmd, *mark = strstr(cmd, "{socket}");
    size_t n = strlen(cmd) + strlen(o->socket) + 16;
    char *out = malloc(n);
    if (mark) snprintf(out, n, "exec %.*s%s%s", (int)(mark - cmd), cmd, o->socket, mark + 8);
    else snprintf(out, n, "exec %s %s", cmd, o->socket);
    return out;
}

/* Starts the server and waits for its socket to appear (not connecting:
   some servers serve the first connection and exit). */
static int server_start(const struct options *o, char *why, size_t whylen) {
    unlink(o->socket);
    char *cmd = server_command(o);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    const char *log = o->server_log ? o->server_log : "/dev/null";
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    char *argv[] = { "sh", "-c", cmd, NULL };
    int rc = posix_spawn(&server_pid, "/bin/sh", &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(cmd);
    if (rc != 0) {
        snprintf(why, whylen, "cannot start the server: %s", strerror(rc));
        server_pid = -1;
        return -1;
    }
    server_starts++;
    double deadline = now_seconds() + 10;
    struct stat st;
    while (now_seconds() < deadline) {
        if (stat(o->socket, &st) == 0 && S_ISSOCK(st.st_mode)) return 0;
        int status;
        if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
            snprintf(why, whylen, "the server exited before listening (%s %d)",
                     WIFEXITED(status) ? "status" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            server_pid = -1;
            return -1;
        }
        /* Any server, so no readiness protocol to wait on: look again soon. */
        usleep(5000);
    }
    snprintf(why, whylen, "the server did not create %s within 10 s", o->socket);
    return -1;
}

static void server_kill(void) {
    if (server_pid <= 0) return;
    kill(-server_pid, SIGTERM);
    for (int i = 0; i < 200; i++) {
        if (waitpid(server_pid, NULL, WNOHANG) == server_pid) { server_pid = -1; return; }
        usleep(5000);   /* waitpid has no timeout: give it a second before SIGKILL */
    }
    kill(-server_pid, SIGKILL);
    waitpid(server_pid, NULL, 0);
    server_pid = -1;
}

/* Waits up to `seconds` for the server to exit; 1 with its status if it did. */
static int server_exited(double seconds, int *status) {
    if (server_pid <= 0) return 0;
    double deadline = now_seconds() + seconds;
    do {
        if (waitpid(server_pid, status, WNOHANG) == server_pid) { server_pid = -1; return 1; }
        if (seconds > 0) usleep(1000);   /* waitpid has no timeout */
    } while (now_seconds() < deadline);
    return 0;
}

static void describe_exit(int status, char *out, size_t n) {
    if (WIFEXITED(status)) snprintf(out, n, "status %d", WEXITSTATUS(status));
    else snprintf(out, n, "signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
}

/* ---- one check in a child process ---- */

struct outcome {
    enum { PASS, FAIL, SKIP } result;
    char *message;          /* why it failed or was skipped */
    double seconds;
};

static void append(char **s, const char *text) {
    size_t a = *s ? strlen(*s) : 0, b = strlen(text);
    *s = realloc(*s, a + b + 2);
    if (a && (*s)[a - 1] != '\n') { (*s)[a++] = '\n'; }
    memcpy(*s + a, text, b + 1);
}

/* Reads cmocka's subunit output: "success: NAME", "skip: NAME",
   "failure: NAME [ …message… ]", "error: NAME [ … ]" (a fixture failed).
   A failure's message is everything the check printed, without the
   subunit framing. */
static void parse_child(const char *out, const char *name, struct outcome *o) {
    char success[160], skipped[160];
    snprintf(success, sizeof(success), "success: %s", name);
    snprintf(skipped, sizeof(skipped), "skip: %s", name);
    const char *reason = strstr(out, SKIP_REASON_PREFIX);
    if (strstr(out, success)) { o->result = PASS; return; }
    if (strstr(out, skipped)) {
        o->result = SKIP;
        if (reason) {
            reason += strlen(SKIP_REASON_PREFIX);
            const char *end = strchr(reason, '\n');
            o->message = strndup(reason, end ? (size_t)(end - reason) : strlen(reason));
        } else {
            o->message = strdup("skipped by the check");
        }
        return;
    }
    o->result = FAIL;
    char *copy = strdup(out), *save = NULL, *msg = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "test: ", 6) || !strcmp(line, "]") || !strncmp(line, SKIP_REASON_PREFIX, strlen(SKIP_REASON_PREFIX))) continue;
        if (!strncmp(line, "failure: ", 9) || !strncmp(line, "error: ", 7)) {
            char *open = strchr(line, '[');
            if (!open) continue;
            line = open + 1;
        }
        size_t len = strlen(line);
        while (len && (line[len - 1] == ']' || line[len - 1] == ' ')) line[--len] = 0;
        while (*line == ' ') line++;
        /* cmocka's own words around a fixture's failure */
        char *p;
        if (!strncmp(line, "Could not run test: ", 20)) line += 20;
        if ((p = strstr(line, "Test setup failed"))) *p = 0;
        if ((p = strstr(line, "Failure!")) && p != line) { p[0] = 0; }
        len = strlen(line);
        while (len && line[len - 1] == ' ') line[--len] = 0;
        if (!strncmp(line, "ERROR: ", 7)) line += 7;
        /* "/path/t_dma.c:38: error:" → "at t_dma.c:38" */
        char where[200];
        len = strlen(line);
        if (len > 8 && !strcmp(line + len - 8, ": error:")) {
            line[len - 8] = 0;
            const char *base = strrchr(line, '/');
            snprintf(where, sizeof(where), "at %s", base ? base + 1 : line);
            line = where;
        }
        if (!*line) continue;
        append(&msg, line);
    }
    free(copy);
    o->message = msg ? msg : strdup("the check ended without an outcome");
}

static struct outcome run_one(const struct check *k, const struct options *opt) {
    struct outcome o = { FAIL, NULL, 0 };
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) { o.message = strdup("pipe failed"); return o; }
    double start = now_seconds();
    fflush(stdout);
    fflush(stderr);
    pid_t child = fork();
    if (child == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        signal(SIGPIPE, SIG_IGN);
        cmocka_set_message_output(CM_OUTPUT_SUBUNIT);
        g_in_check = 1;
        const struct CMUnitTest t[] = { { k->name, k->test, k->setup, k->teardown, NULL } };
        int failed = _cmocka_run_group_tests(k->name, t, 1, NULL, NULL);
        fflush(stdout);
        _exit(failed ? 1 : 0);
    }
    close(pipefd[1]);
    if (child < 0) { close(pipefd[0]); o.message = strdup("fork failed"); return o; }
    char *out = calloc(1, 1);
    size_t len = 0;
    /* Setup, the check and teardown each wait at most --timeout per reply;
       the whole check gets twice that and a second. */
    double deadline = start + 2.0 * opt->timeout_ms / 1000.0 + 1.0;
    int timed_out = 0;
    for (;;) {
        double left = deadline - now_seconds();
        if (left <= 0) { timed_out = 1; break; }
        struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) continue;
        char buf[4096];
        ssize_t n = read(pipefd[0], buf, sizeof(buf));
        if (n <= 0) break;
        if (len < (1 << 20)) {
            out = realloc(out, len + (size_t)n + 1);
            memcpy(out + len, buf, (size_t)n);
            len += (size_t)n;
            out[len] = 0;
        }
    }
    close(pipefd[0]);
    int status = 0;
    if (timed_out) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        char m[128];
        snprintf(m, sizeof(m), "no outcome within %.0f s: the server stopped answering (--timeout %d ms per reply)",
                 deadline - start, opt->timeout_ms);
        o.message = strdup(m);
        o.result = FAIL;
    } else {
        waitpid(child, &status, 0);
        if (WIFSIGNALED(status)) {
            char m[128];
            snprintf(m, sizeof(m), "the check crashed (signal %d): a bug in the suite, please report it", WTERMSIG(status));
            o.message = strdup(m);
        } else {
            parse_child(out, k->name, &o);
        }
    }
    free(out);
    o.seconds = now_seconds() - start;
    return o;
}

/* ---- reports ---- */

struct result {
    const struct check *check;
    struct outcome outcome;
};

static void xml_escape(FILE *f, const char *s) {
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        switch (ch) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\n': case '\t': fputc(ch, f); break;
        default:
            if (ch < 0x20) fprintf(f, "&#x%x;", 0xfffd); /* XML 1.0 has no control characters */
            else fputc(ch, f);
        }
    }
}

static int write_junit(const char *path, const char *suite_name, const struct result *rs, size_t n, double seconds) {
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "vfio-user-conformance: cannot write %s: %s\n", path, strerror(errno)); return -1; }
    size_t fail = 0, skip = 0;
    for (size_t i = 0; i < n; i++) { fail += rs[i].outcome.result == FAIL; skip += rs[i].outcome.result == SKIP; }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<testsuites name=\"vfio-user-conformance\" tests=\"%zu\" failures=\"%zu\" skipped=\"%zu\" errors=\"0\" time=\"%.3f\">\n",
            n, fail, skip, seconds);
    for (int k = 0; k < CLASS_COUNT; k++) {
        size_t cn = 0, cf = 0, cs = 0;
        double ct = 0;
        for (size_t i = 0; i < n; i++) {
            if (rs[i].check->klass != (enum check_class)k) continue;
            cn++; cf += rs[i].outcome.result == FAIL; cs += rs[i].outcome.result == SKIP; ct += rs[i].outcome.seconds;
        }
        if (cn == 0) continue;
        fprintf(f, "  <testsuite name=\"");
        xml_escape(f, suite_name);
        fprintf(f, ".%s\" tests=\"%zu\" failures=\"%zu\" skipped=\"%zu\" errors=\"0\" time=\"%.3f\">\n",
                class_names[k], cn, cf, cs, ct);
        for (size_t i = 0; i < n; i++) {
            const struct result *r = &rs[i];
            if (r->check->klass != (enum check_class)k) continue;
            fprintf(f, "    <testcase classname=\"%s\" name=\"", class_names[k]);
            xml_escape(f, r->check->name);
            fprintf(f, "\" time=\"%.3f\">\n", r->outcome.seconds);
            fprintf(f, "      <properties><property name=\"class\" value=\"%s\"/><property name=\"section\" value=\"", class_names[k]);
            xml_escape(f, r->check->section);
            fprintf(f, "\"/>");
            if (r->check->needs) {
                fprintf(f, "<property name=\"needs\" value=\"");
                xml_escape(f, r->check->needs);
                fprintf(f, "\"/>");
            }
            fprintf(f, "</properties>\n");
            if (r->outcome.result == FAIL) {
                fprintf(f, "      <failure message=\"");
                const char *m = r->outcome.message ? r->outcome.message : "";
                const char *nl = strchr(m, '\n');
                char *first = strndup(m, nl ? (size_t)(nl - m) : strlen(m));
                xml_escape(f, first);
                free(first);
                fprintf(f, "\">");
                xml_escape(f, m);
                fprintf(f, "</failure>\n");
            } else if (r->outcome.result == SKIP) {
                fprintf(f, "      <skipped message=\"");
                xml_escape(f, r->outcome.message);
                fprintf(f, "\"/>\n");
            }
            fprintf(f, "    </testcase>\n");
        }
        fprintf(f, "  </testsuite>\n");
    }
    fprintf(f, "</testsuites>\n");
    return fclose(f) == 0 ? 0 : -1;
}

static void print_result(const struct result *r, int quiet) {
    static const char *words[] = { "PASS", "FAIL", "SKIP" };
    if (quiet && r->outcome.result == PASS) return;
    printf("%s  %-8s  %-4s  %s", words[r->outcome.result], class_names[r->check->klass], r->check->section, r->check->name);
    if (r->outcome.result == SKIP && r->outcome.message) printf(": %s", r->outcome.message);
    printf("\n");
    if (r->outcome.result == FAIL && r->outcome.message) {
        const char *m = r->outcome.message;
        while (*m) {
            const char *nl = strchr(m, '\n');
            size_t l = nl ? (size_t)(nl - m) : strlen(m);
            printf("      %.*s\n", (int)l, m);
            m += l + (nl ? 1 : 0);
        }
    }
    fflush(stdout);
}

/* ---- the run ---- */

int run_checks(const struct check *const *checks, size_t n, const struct options *opt) {
    struct result *rs = calloc(n ? n : 1, sizeof(*rs));
    size_t done = 0;
    int aborted = 0, one_shot = 0;
    char why[256];
    double start = now_seconds();

    if (opt->server_cmd && server_start(opt, why, sizeof(why)) != 0) {
        fprintf(stderr, "vfio-user-conformance: %s\n", why);
        free(rs);
        return 2;
    }
    if (discover(opt->socket) != 0) {
        int e = errno, status;
        if (opt->server_cmd && server_exited(0.2, &status)) {
            describe_exit(status, why, sizeof(why));
            fprintf(stderr, "vfio-user-conformance: the server exited (%s) before accepting a connection%s%s\n", why,
                    opt->server_log ? "; see " : "", opt->server_log ? opt->server_log : " (--server-log FILE keeps its output)");
        } else {
            fprintf(stderr, "vfio-user-conformance: cannot connect to the server at %s: %s\n", opt->socket, strerror(e));
        }
        server_kill();
        free(rs);
        return 2;
    }
    print_facts(stdout);
    if (opt->server_cmd) {
        /* A server that exits once its client leaves is started for every check. */
        int status;
        if (server_exited(0.5, &status)) {
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                one_shot = g_one_shot = 1;
                printf("server: exits when its client leaves; the suite starts it for every check\n");
            } else {
                describe_exit(status, why, sizeof(why));
                printf("server: exited (%s) after the discovery connection; started again\n", why);
            }
            if (server_start(opt, why, sizeof(why)) != 0) {
                fprintf(stderr, "vfio-user-conformance: %s\n", why);
                free(rs);
                return 2;
            }
        }
    }
    fflush(stdout);

    for (size_t i = 0; i < n && !aborted; i++) {
        const struct check *k = checks[i];
        struct result *r = &rs[done++];
        r->check = k;
        const char *no;
        if (k->needs && !has_feature(k->needs, &no)) {
            r->outcome.result = SKIP;
            r->outcome.message = strdup(no);
            print_result(r, opt->quiet);
            continue;
        }
        if (opt->server_cmd && server_pid <= 0 && server_start(opt, why, sizeof(why)) != 0) {
            r->outcome.result = FAIL;
            r->outcome.message = strdup(why);
            print_result(r, opt->quiet);
            aborted = 1;
            break;
        }
        r->outcome = run_one(k, opt);
        char mark[200];
        snprintf(mark, sizeof(mark), NO_SERVER_MARK " at %s", opt->socket);
        int unreachable = r->outcome.result == FAIL && r->outcome.message && strstr(r->outcome.message, mark);
        if (opt->server_cmd) {
            int status;
            int exited = server_exited(one_shot ? 2.0 : 0.05, &status);
            int expected = exited && one_shot && WIFEXITED(status) && WEXITSTATUS(status) == 0;
            char finding[300] = "";
            if (exited && !expected) {
                describe_exit(status, why, sizeof(why));
                snprintf(finding, sizeof(finding), "server exited after this check (%s)", why);
            } else if (!exited && unreachable) {
                snprintf(finding, sizeof(finding), "server stopped accepting connections after this check");
            }
            if (!exited && (one_shot || unreachable)) server_kill();
            if (unreachable && done >= 2) {
                /* The check before left the server gone: the finding is its. */
                struct result *prev = &rs[done - 2];
                if (prev->outcome.result != FAIL) { free(prev->outcome.message); prev->outcome.message = NULL; }
                prev->outcome.result = FAIL;
                append(&prev->outcome.message, finding[0] ? finding : "server exited after this check");
                append(&prev->outcome.message, "(found when the next check could not connect)");
                print_result(prev, 0);
                finding[0] = 0;
            }
            if (unreachable && server_start(opt, why, sizeof(why)) == 0) {
                free(r->outcome.message);
                r->outcome = run_one(k, opt);
                exited = server_exited(one_shot ? 2.0 : 0.05, &status);
                if (exited && !(one_shot && WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                    describe_exit(status, why, sizeof(why));
                    snprintf(finding, sizeof(finding), "server exited after this check (%s)", why);
                } else if (!exited && one_shot) {
                    server_kill();
                }
            }
            if (finding[0]) {
                if (r->outcome.result != FAIL) { free(r->outcome.message); r->outcome.message = NULL; }
                r->outcome.result = FAIL;
                append(&r->outcome.message, finding);
            }
        } else if (unreachable) {
            print_result(r, opt->quiet);
            fprintf(stderr, "vfio-user-conformance: the server at %s no longer accepts connections (after %s); "
                            "%zu checks not run. Give --server-cmd so the suite can start it again.\n",
                    opt->socket, i > 0 ? checks[i - 1]->name : "the discovery connection", n - i - 1);
            aborted = 1;
            continue;
        }
        print_result(r, opt->quiet);
    }
    server_kill();

    size_t totals[3] = { 0 }, per[CLASS_COUNT][3];
    memset(per, 0, sizeof(per));
    for (size_t i = 0; i < done; i++) {
        totals[rs[i].outcome.result]++;
        per[rs[i].check->klass][rs[i].outcome.result]++;
    }
    printf("\n");
    if (opt->server_cmd && server_starts > 1)
        printf("server started %d times%s\n", server_starts, one_shot ? " (it exits when its client leaves)" : "");
    for (int k = 0; k < CLASS_COUNT; k++)
        printf("%-8s  %zu passed, %zu failed, %zu skipped\n", class_names[k], per[k][PASS], per[k][FAIL], per[k][SKIP]);
    if (aborted) printf("run ended early: %zu of %zu checks not run\n", n - done, n);
    printf("%zu passed, %zu failed, %zu skipped\n", totals[PASS], totals[FAIL], totals[SKIP]);
    fflush(stdout);
    int rc = totals[FAIL] || aborted ? 1 : 0;
    if (opt->junit && write_junit(opt->junit, opt->name, rs, done, now_seconds() - start) != 0) rc = 2;
    for (size_t i = 0; i < done; i++) free(rs[i].outcome.message);
    free(rs);
    return rc;
}
