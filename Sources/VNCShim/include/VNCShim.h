// umdev's VNC output on libvncserver: a view-only RFB server whose
// framebuffer is XRGB8888 (32-bit true colour, red/green/blue shifts
// 16/8/0) with any stride. libvncserver serves each client on threads of
// its own, so a slow client never holds up another or the caller.
#ifndef UMDEV_VNC_SHIM_H
#define UMDEV_VNC_SHIM_H

#include <stddef.h>
#include <stdint.h>

typedef struct umdev_vnc umdev_vnc;

/// Starts serving `width`x`height` pixels at `pixels` (XRGB8888, `stride`
/// bytes per line; read only) on `host`:`port` (an IPv4 address). With a
/// non-NULL `password`, clients must pass RFB's VNC authentication. Returns
/// NULL with a message in `error` when the server cannot start.
umdev_vnc *umdev_vnc_start(const char *host, int port, const char *password, const char *name,
                           const void *pixels, int width, int height, int stride,
                           char *error, size_t error_size);

/// Shows pixels of another size, stride or buffer: clients that support
/// DesktopSize are told the new size, and every client gets the whole
/// screen again. Waits for no client: if one is in the middle of sending
/// (a slow or stalled client), nothing changes and it returns 0; call again
/// on the next refresh. A client that holds a change up for two seconds
/// while its send queue does not shrink has stopped reading and is
/// disconnected. Returns 1 when the new pixels are shown.
int umdev_vnc_show(umdev_vnc *vnc, const void *pixels, int width, int height, int stride);

/// Points at another buffer of the same size and stride (a flip or pan),
/// without holding any client: both buffers must stay valid; mark the
/// tiles that differ.
void umdev_vnc_move(umdev_vnc *vnc, const void *pixels);

/// Marks [x, x+w) x [y, y+h) as changed, for every client.
void umdev_vnc_mark(umdev_vnc *vnc, int x, int y, int w, int h);

/// Clients connected now.
int umdev_vnc_clients(umdev_vnc *vnc);

/// Bytes sent to all clients so far, including those that left.
uint64_t umdev_vnc_bytes_sent(umdev_vnc *vnc);

/// libvncserver's own messages to stderr: on with `verbose`, else none.
void umdev_vnc_log(int verbose);

/// Disconnects every client, stops serving and frees the server.
void umdev_vnc_stop(umdev_vnc *vnc);

#endif
