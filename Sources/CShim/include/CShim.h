// Thin wrappers over the Linux calls and macros that Swift's Glibc module
// does not import (eventfd, memfd_create, the CMSG_* macros, pty setup).
// The bodies live in shim.c, compiled with _GNU_SOURCE; this header only
// declares them, so it does not change how the system headers look to Swift.
#ifndef UMDEV_CSHIM_H
#define UMDEV_CSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Largest number of fds one message may carry in either direction.
#define UMDEV_MAX_FDS 16

/// accept4(2) with SOCK_CLOEXEC.
int umdev_accept_cloexec(int listener);

/// poll(2)'s POLLRDHUP (peer closed or shut down writing), hidden from Swift
/// by _GNU_SOURCE.
#define UMDEV_POLLRDHUP 0x2000

/// lseek(2)'s SEEK_DATA and SEEK_HOLE, hidden from Swift by _GNU_SOURCE
/// (their values are taken from the system header in shim.c).
extern const int umdev_seek_data;
extern const int umdev_seek_hole;

/// rename(2) that fails with EEXIST instead of replacing `to`.
int umdev_rename_noreplace(const char *from, const char *to);

/// eventfd(2) with EFD_CLOEXEC | EFD_NONBLOCK.
int umdev_eventfd(unsigned int initval);

/// memfd_create(2) with MFD_CLOEXEC (and sealing allowed).
int umdev_memfd(const char *name);

/// Seals a memfd's size (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), so a
/// client holding the descriptor cannot truncate memory this process maps.
int umdev_memfd_seal_size(int fd);

/// Whether a memfd's size is sealed as `umdev_memfd_seal_size` seals it:
/// what memory handed over by another process must be before it is mapped.
int umdev_memfd_size_sealed(int fd);

/// Sends `len` bytes from `buf` plus `nfds` descriptors as SCM_RIGHTS in one
/// sendmsg(2). Returns bytes sent or -1 with errno set. MSG_NOSIGNAL so a
/// vanished peer is an EPIPE, not a SIGPIPE.
ssize_t umdev_sendmsg(int sock, const void *buf, size_t len,
                                    const int *fds, int nfds);

/// recvmsg(2) into `buf`, collecting up to `maxfds` SCM_RIGHTS descriptors
/// into `fds` (count in *nfds). Descriptors beyond `maxfds`, or arriving in a
/// truncated control message, are closed here and *truncated is set: the
/// caller treats that message as a framing error. Received fds are CLOEXEC.
/// A signal interrupts it (-1, EINTR): how a live upgrade stops a session.
ssize_t umdev_recvmsg_once(int sock, void *buf, size_t len, int flags,
                                    int *fds, int maxfds, int *nfds, int *truncated);

/// `umdev_recvmsg_once`, retried on EINTR.
ssize_t umdev_recvmsg(int sock, void *buf, size_t len, int flags,
                                    int *fds, int maxfds, int *nfds, int *truncated);

/// The process id of a UNIX socket's peer (SO_PEERCRED, which needs
/// _GNU_SOURCE's struct ucred); -1 when the kernel does not say.
pid_t umdev_peer_pid(int sock);

/// MSG_DONTWAIT, which Swift's Glibc module imports as an enum case.
int umdev_msg_dontwait(void);

/// posix_openpt + grantpt + unlockpt, the line in raw mode, the master
/// non-blocking. `*slave` is a descriptor of the slave end for the caller
/// to hold open: without one the master reports POLLHUP until a user opens
/// the slave, and a poll loop on it would spin.
int umdev_open_pty(char *name, size_t namelen, int *slave);
/// The slave path of a pty master into name; -1 (errno set) when fd is not one.
int umdev_pty_name(int fd, char *name, size_t namelen);

/// Sets a descriptor (a pty slave the tests open) to raw mode.
int umdev_make_raw(int fd);

/// ppoll(2) with a nanosecond timeout (negative waits for ever); `fds` is a
/// `struct pollfd` array. poll(2)'s millisecond timeout is too coarse for a
/// UART's receive timeout (0.35 ms at 115200 baud).
int umdev_poll_ns(void *fds, unsigned long nfds, long long timeout_ns);

/// memcpy that survives the source or destination being pages of a file
/// that shrank under it (a client truncating a memfd it handed over for
/// DMA): the SIGBUS is caught and the copy returns EFAULT instead of the
/// process dying. 0 on success.
int umdev_guarded_copy(void *dst, const void *src, size_t len);

/* ---- live upgrade ---- */

/// The signal that interrupts a session thread's blocking recvmsg or poll
/// (EINTR) so it can stop at a message boundary for a live upgrade:
/// SIGRTMIN+1, with a handler that does nothing, installed once without
/// SA_RESTART. Returns the signal number.
int umdev_install_kick_signal(void);

/// Sends the kick signal to a thread (pthread_kill); 0 or an errno.
int umdev_kick_thread(unsigned long thread);

/// Sets the calling thread's signal mask (inherited by the threads it
/// creates) to `signo` alone: blocked, so that only `umdev_wait_signal`
/// receives it, and nothing else blocked, whatever mask the process was
/// started with (a spawning parent's blocked signals are inherited across
/// exec). 0 or an errno.
int umdev_block_only_signal(int signo);

/// Unblocks the kick signal in the calling thread. 0 or an errno.
int umdev_allow_kick(void);

/// Waits for a blocked `signo` (sigwaitinfo); returns the sender's pid (0
/// if unknown), or -1 with errno.
int umdev_wait_signal(int signo);

/// Sets or clears FD_CLOEXEC; 0 or -1 with errno.
int umdev_set_cloexec(int fd, int on);

#endif
