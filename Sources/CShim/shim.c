// Bodies of the wrappers declared in CShim.h.
#define _GNU_SOURCE 1
#include "CShim.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

_Static_assert(UMDEV_POLLRDHUP == POLLRDHUP, "POLLRDHUP differs on this system");

// umdev_sendmsg and umdev_recvmsg enter the kernel through syscall(2)
// rather than glibc's wrappers: in a threaded process those wrappers switch
// pthread cancellation on and off around every call (some 60 instructions
// per request on the hot path), and umdev never cancels a thread. Under a
// sanitizer the wrappers stay: their interceptors check the buffers and, for
// ThreadSanitizer, order the memory a message hands from thread to thread.
#if defined(__has_feature)
#  if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#    define UMDEV_SANITIZED 1
#  endif
#endif
//
// On x86_64 and aarch64 the system call is made in line (three arguments,
// the kernel's calling convention): glibc's syscall(2) is a function of its
// own that shuffles six argument registers for every call. Elsewhere it is
// syscall(2).
#if !defined(UMDEV_SANITIZED) && (defined(__x86_64__) || defined(__aarch64__))
static inline long umdev_syscall3(long number, long a, long b, long c) {
    long result;
#  if defined(__x86_64__)
    __asm__ volatile ("syscall" : "=a"(result) : "a"(number), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
#  else
    register long x8 __asm__("x8") = number;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile ("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    result = x0;
#  endif
    // The kernel returns -errno; the callers expect -1 and errno, as from libc.
    if (result < 0 && result > -4096) { errno = (int)-result; return -1; }
    return result;
}
#  define umdev_raw_sendmsg(s, m, f) umdev_syscall3(SYS_sendmsg, (s), (long)(m), (f))
#  define umdev_raw_recvmsg(s, m, f) umdev_syscall3(SYS_recvmsg, (s), (long)(m), (f))
#elif defined(UMDEV_SANITIZED)
#  define umdev_raw_sendmsg(s, m, f) sendmsg((s), (m), (f))
#  define umdev_raw_recvmsg(s, m, f) recvmsg((s), (m), (f))
#else
#  define umdev_raw_sendmsg(s, m, f) syscall(SYS_sendmsg, (s), (m), (f))
#  define umdev_raw_recvmsg(s, m, f) syscall(SYS_recvmsg, (s), (m), (f))
#endif

/// accept4(2) with SOCK_CLOEXEC: no window in which a process spawned by
/// another thread could inherit the connection.
int umdev_accept_cloexec(int listener) {
    return accept4(listener, NULL, NULL, SOCK_CLOEXEC);
}

/// rename(2) that fails with EEXIST instead of replacing `to`.
int umdev_rename_noreplace(const char *from, const char *to) {
    return renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
}

/// eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK.
int umdev_eventfd(unsigned int initval) {
    return eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK);
}

/// memfd_create(2) with MFD_CLOEXEC (and sealing allowed).
int umdev_memfd(const char *name) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

pid_t umdev_peer_pid(int sock) {
    struct ucred cred;
    socklen_t length = sizeof(cred);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0 || cred.pid <= 0) return -1;
    return cred.pid;
}

int umdev_memfd_seal_size(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
}

int umdev_memfd_size_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    int want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    return seals >= 0 && (seals & want) == want;
}

/// Sends `len` bytes from `buf` plus `nfds` descriptors as SCM_RIGHTS in one
/// sendmsg(2). Returns bytes sent or -1 with errno set. MSG_NOSIGNAL so a
/// vanished peer is an EPIPE, not a SIGPIPE.
ssize_t umdev_sendmsg(int sock, const void *buf, size_t len,
                                    const int *fds, int nfds) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union {
        char bytes[CMSG_SPACE(sizeof(int) * UMDEV_MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > 0) {
        if (nfds > UMDEV_MAX_FDS) { errno = EINVAL; return -1; }
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    do { n = umdev_raw_sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}

/// recvmsg(2) into `buf`, collecting up to `maxfds` SCM_RIGHTS descriptors
/// into `fds` (count in *nfds). Descriptors beyond `maxfds`, or arriving in a
/// truncated control message, are closed here and *truncated is set: the
/// caller treats that message as a framing error. Received fds are CLOEXEC.
ssize_t umdev_recvmsg(int sock, void *buf, size_t len, int flags,
                                    int *fds, int maxfds, int *nfds, int *truncated) {
    ssize_t n;
    do { n = umdev_recvmsg_once(sock, buf, len, flags, fds, maxfds, nfds, truncated); } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t umdev_recvmsg_once(int sock, void *buf, size_t len, int flags,
                                    int *fds, int maxfds, int *nfds, int *truncated) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    union {
        char bytes[CMSG_SPACE(sizeof(int) * 64)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                          .msg_controllen = sizeof(control.bytes) };
    *nfds = 0;
    *truncated = 0;
    ssize_t n;
    n = umdev_raw_recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    if (msg.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *data = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, &data[i], sizeof(int));
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                close(fd);
                *truncated = 1;
            }
        }
    }
    return n;
}

/// MSG_DONTWAIT, which Swift's Glibc module imports as an enum case.
int umdev_msg_dontwait(void) { return MSG_DONTWAIT; }

/// posix_openpt + grantpt + unlockpt, master in raw mode, non-blocking.
int umdev_open_pty(char *name, size_t namelen, int *slave) {
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (m < 0) return -1;
    if (grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, name, namelen) != 0) {
        int e = errno; close(m); errno = e; return -1;
    }
    struct termios t;
    int s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) { int e = errno; close(m); errno = e; return -1; }
    if (tcgetattr(s, &t) == 0) { cfmakeraw(&t); tcsetattr(s, TCSANOW, &t); }
    *slave = s;
    return m;
}

/// Sets a descriptor (a pty slave the tests open) to raw mode.
int umdev_make_raw(int fd) {
    struct termios t;
    if (tcgetattr(fd, &t) != 0) return -1;
    cfmakeraw(&t);
    return tcsetattr(fd, TCSANOW, &t);
}



int umdev_poll_ns(void *fds, unsigned long nfds, long long timeout_ns) {
    if (timeout_ns < 0) return ppoll((struct pollfd *)fds, nfds, NULL, NULL);
    struct timespec ts = { .tv_sec = timeout_ns / 1000000000LL, .tv_nsec = timeout_ns % 1000000000LL };
    return ppoll((struct pollfd *)fds, nfds, &ts, NULL);
}

/* ---- copies into and out of client memory that may vanish under them ---- */

#include <setjmp.h>
#include <signal.h>
#include <pthread.h>

static __thread sigjmp_buf *guarded_copy_env;
static struct sigaction previous_sigbus;
static pthread_once_t sigbus_once = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *env = guarded_copy_env;
    if (env) siglongjmp(*env, 1);
    /* Not a guarded copy: put the previous disposition back; returning
       re-runs the faulting instruction, which then dies as it would have. */
    (void)sig; (void)info; (void)context;
    sigaction(SIGBUS, &previous_sigbus, NULL);
}

static void install_sigbus(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_sigbus);
}

int umdev_guarded_copy(void *dst, const void *src, size_t len) {
    pthread_once(&sigbus_once, install_sigbus);
    sigjmp_buf env;
    /* Save the mask (a sigprocmask per copy): a runtime that wraps signal
       handlers, ThreadSanitizer's for one, blocks signals around ours, and
       jumping out must not leave SIGBUS blocked. */
    if (sigsetjmp(env, 1) != 0) {
        guarded_copy_env = NULL;
        return EFAULT;
    }
    guarded_copy_env = &env;
    memcpy(dst, src, len);
    guarded_copy_env = NULL;
    return 0;
}

const int umdev_seek_data = SEEK_DATA;
const int umdev_seek_hole = SEEK_HOLE;


/* ---- live upgrade ---- */

static void on_kick(int signo) { (void)signo; }
static pthread_once_t kick_once = PTHREAD_ONCE_INIT;
static void install_kick(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_kick;
    sa.sa_flags = 0; /* no SA_RESTART: the point is EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGRTMIN + 1, &sa, NULL);
}

int umdev_install_kick_signal(void) {
    pthread_once(&kick_once, install_kick);
    return SIGRTMIN + 1;
}

int umdev_kick_thread(unsigned long thread) {
    return pthread_kill((pthread_t)thread, SIGRTMIN + 1);
}

int umdev_block_only_signal(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(SIG_SETMASK, &set, NULL);
}

int umdev_allow_kick(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 1);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int umdev_wait_signal(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    int r;
    do { r = sigwaitinfo(&set, &info); } while (r < 0 && errno == EINTR);
    return r < 0 ? -1 : (int)info.si_pid;
}

int umdev_set_cloexec(int fd, int on) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC));
}

/// The slave path of a pty master into `name`; -1 (errno set) when `fd` is not a pty master.
int umdev_pty_name(int fd, char *name, size_t namelen) {
    return ptsname_r(fd, name, namelen) == 0 ? 0 : -1;
}
