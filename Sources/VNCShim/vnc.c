// umdev's VNC output: a thin layer over libvncserver's public API. See
// VNCShim.h. libvncserver reads the framebuffer from its client threads;
// the buffer is the caller's (usually the guest's plane, mapped read-only),
// so nothing here ever writes into it: no server-side cursor is drawn and
// input events are ignored.
#include "VNCShim.h"

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <rfb/rfb.h>
#include <rfb/rfbregion.h>

struct umdev_vnc {
    rfbScreenInfoPtr screen;
    char *passwords[2];
    pthread_mutex_t stats_lock;
    uint64_t bytes_of_gone_clients;
};

static void quiet(const char *format, ...) { (void)format; }

void umdev_vnc_log(int verbose) {
    rfbLogEnable(verbose);
    if (!verbose) { rfbLog = quiet; rfbErr = quiet; }
}

static void ignore_pointer(int buttons, int x, int y, rfbClientPtr cl) {
    (void)buttons; (void)x; (void)y; (void)cl;
}

static void ignore_keys(rfbBool down, rfbKeySym key, rfbClientPtr cl) {
    (void)down; (void)key; (void)cl;
}

/* How long a client may hold up a change of mode without its send queue
   shrinking before it is dropped: it has stopped reading. */
#define STALL_LIMIT_NS 2000000000LL

/* Per client: since when a mode change has found it busy, and how many
   bytes its socket held unsent then. */
struct client_watch {
    long long busy_since;
    int unsent;
};

static long long monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void client_gone(rfbClientPtr cl) {
    umdev_vnc *vnc = cl->screen->screenData;
    pthread_mutex_lock(&vnc->stats_lock);
    vnc->bytes_of_gone_clients += (uint64_t)rfbStatGetSentBytes(cl);
    pthread_mutex_unlock(&vnc->stats_lock);
    free(cl->clientData);
    cl->clientData = NULL;
}

static enum rfbNewClientAction client_arrived(rfbClientPtr cl) {
    cl->clientData = calloc(1, sizeof(struct client_watch));
    cl->clientGoneHook = client_gone;
    return RFB_CLIENT_ACCEPT;
}

/* A client was found in the middle of a send. If its send queue has not
   shrunk for STALL_LIMIT_NS it has stopped reading: shut its socket down,
   which fails the blocked write and lets libvncserver drop it. */
static void note_busy(rfbClientPtr cl) {
    struct client_watch *w = cl->clientData;
    if (!w) return;
    int unsent = 0;
    if (ioctl(cl->sock, SIOCOUTQ, &unsent) != 0) unsent = -1;
    long long now = monotonic_ns();
    if (w->busy_since == 0 || (unsent >= 0 && unsent < w->unsent)) {
        w->busy_since = now;
        w->unsent = unsent;
    } else if (now - w->busy_since > STALL_LIMIT_NS) {
        rfbLog("client %s stopped reading; disconnecting it\n", cl->host);
        shutdown(cl->sock, SHUT_RDWR);
    }
}

static void note_not_busy(rfbClientPtr cl) {
    struct client_watch *w = cl->clientData;
    if (w) w->busy_since = 0;
}

/* XRGB8888 little-endian: red in bits 16-23, green 8-15, blue 0-7. */
static void set_format(rfbScreenInfoPtr s, int width, int height, int stride) {
    s->width = width;
    s->height = height;
    s->paddedWidthInBytes = stride;
    s->bitsPerPixel = 32;
    s->depth = 24;
    rfbPixelFormat *f = &s->serverFormat;
    f->bitsPerPixel = 32;
    f->depth = 24;
    f->bigEndian = 0;
    f->trueColour = 1;
    f->redMax = f->greenMax = f->blueMax = 255;
    f->redShift = 16;
    f->greenShift = 8;
    f->blueShift = 0;
}

umdev_vnc *umdev_vnc_start(const char *host, int port, const char *password, const char *name,
                           const void *pixels, int width, int height, int stride,
                           char *error, size_t error_size) {
    in_addr_t address = inet_addr(host);
    if (address == INADDR_NONE) {
        snprintf(error, error_size, "%s is not an IPv4 address", host);
        return NULL;
    }
    umdev_vnc *vnc = calloc(1, sizeof(*vnc));
    int argc = 0;
    rfbScreenInfoPtr s = rfbGetScreen(&argc, NULL, width, height, 8, 3, 4);
    if (!vnc || !s) {
        snprintf(error, error_size, "out of memory");
        free(vnc);
        return NULL;
    }
    pthread_mutex_init(&vnc->stats_lock, NULL);
    vnc->screen = s;
    s->screenData = vnc;
    set_format(s, width, height, stride);
    s->frameBuffer = (char *)pixels;
    s->desktopName = name;
    s->listenInterface = address;
    s->port = port;
    s->ipv6port = 0;
    s->autoPort = 0;
    s->alwaysShared = TRUE;
    s->cursor = NULL;
    s->ptrAddEvent = ignore_pointer;
    s->kbdAddEvent = ignore_keys;
    s->newClientHook = client_arrived;
    if (password) {
        vnc->passwords[0] = strdup(password);
        s->authPasswdData = vnc->passwords;
        s->passwordCheck = rfbCheckPasswordByList;
    }
    rfbInitServer(s);
    if (s->listenSock < 0) {
        snprintf(error, error_size, "cannot listen on %s:%d", host, port);
        rfbScreenCleanup(s);
        free(vnc->passwords[0]);
        free(vnc);
        return NULL;
    }
    rfbRunEventLoop(s, -1, TRUE);
    return vnc;
}

int umdev_vnc_show(umdev_vnc *vnc, const void *pixels, int width, int height, int stride) {
    rfbScreenInfoPtr s = vnc->screen;
    int resized = width != s->width || height != s->height;
    rfbClientPtr *held = NULL;
    int count = 0, capacity = 0, busy = 0;

    /* No client may be sending while the layout changes under it. A client
       that is (a slow or stalled one, blocked in write) is not waited for:
       the caller tries again on its next refresh, and a client that holds
       things up without making progress is dropped (note_busy). A client
       whose sendMutex is held cannot be freed, so the pointers stay good
       until unlocked. */
    rfbClientIteratorPtr it = rfbGetClientIterator(s);
    rfbClientPtr cl;
    while ((cl = rfbClientIteratorNext(it))) {
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 8;
            rfbClientPtr *grown = realloc(held, sizeof(*held) * capacity);
            if (!grown) { busy = 1; break; }
            held = grown;
        }
        if (pthread_mutex_trylock(&cl->sendMutex) != 0) { note_busy(cl); busy = 1; break; }
        note_not_busy(cl);
        held[count++] = cl;
    }
    rfbReleaseClientIterator(it);

    if (!busy) {
        set_format(s, width, height, stride);
        s->frameBuffer = (char *)pixels;
        for (int i = 0; i < count; i++) {
            cl = held[i];
            LOCK(cl->updateMutex);
            sraRgnDestroy(cl->modifiedRegion);
            cl->modifiedRegion = sraRgnCreateRect(0, 0, width, height);
            sraRgnMakeEmpty(cl->copyRegion);
            cl->copyDX = cl->copyDY = 0;
            if (resized && cl->useNewFBSize) cl->newFBSizePending = TRUE;
            TSIGNAL(cl->updateCond);
            UNLOCK(cl->updateMutex);
        }
    }
    for (int i = 0; i < count; i++) UNLOCK(held[i]->sendMutex);
    free(held);
    return !busy;
}

void umdev_vnc_move(umdev_vnc *vnc, const void *pixels) {
    /* One aligned pointer store: a client reads either buffer whole, and
       both stay mapped; the caller marks what differs. */
    __atomic_store_n(&vnc->screen->frameBuffer, (char *)pixels, __ATOMIC_RELEASE);
}

void umdev_vnc_mark(umdev_vnc *vnc, int x, int y, int w, int h) {
    rfbMarkRectAsModified(vnc->screen, x, y, x + w, y + h);
}

int umdev_vnc_clients(umdev_vnc *vnc) {
    int n = 0;
    rfbClientIteratorPtr it = rfbGetClientIterator(vnc->screen);
    while (rfbClientIteratorNext(it)) n++;
    rfbReleaseClientIterator(it);
    return n;
}

uint64_t umdev_vnc_bytes_sent(umdev_vnc *vnc) {
    uint64_t total = 0;
    rfbClientIteratorPtr it = rfbGetClientIterator(vnc->screen);
    rfbClientPtr cl;
    while ((cl = rfbClientIteratorNext(it))) total += (uint64_t)rfbStatGetSentBytes(cl);
    rfbReleaseClientIterator(it);
    pthread_mutex_lock(&vnc->stats_lock);
    total += vnc->bytes_of_gone_clients;
    pthread_mutex_unlock(&vnc->stats_lock);
    return total;
}

void umdev_vnc_stop(umdev_vnc *vnc) {
    rfbShutdownServer(vnc->screen, TRUE);
    rfbScreenCleanup(vnc->screen);
    free(vnc->passwords[0]);
    pthread_mutex_destroy(&vnc->stats_lock);
    free(vnc);
}
