/*
 * The floor: the least a vfio-user server can do per request, for
 * scripts/measure.sh to count beside umdev. One client, one recv, a switch
 * on the command, one send; it answers VERSION, DEVICE_GET_INFO,
 * DEVICE_GET_REGION_INFO, DEVICE_GET_IRQ_INFO, REGION_READ and
 * REGION_WRITE for a device with one 4 KiB BAR0 of memory, and refuses
 * anything else with ENOSYS. It checks only what keeps itself safe (sizes
 * against its buffer, the access against the region): none of the
 * protocol's other checks, no device model, no interrupts. Not a server to
 * use: a yardstick.
 *
 *   cc -O2 -o floor-server Benchmarks/floor/floor-server.c
 *   floor-server SOCKET
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { VERSION = 1, GET_INFO = 4, GET_REGION_INFO = 5, GET_IRQ_INFO = 7, REGION_READ = 9, REGION_WRITE = 10 };
enum { HEADER = 16, REPLY = 1, ERROR = 0x10, BAR0_SIZE = 4096, BUFFER = 1 << 16 };

struct header {
    uint16_t id, command;
    uint32_t size, flags, error;
};

static uint8_t bar0[BAR0_SIZE];
static uint8_t in[BUFFER], out[BUFFER];

static const char caps[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";

/* Builds the reply to the request in `in` (`n` bytes) in `out`; returns its size. */
static size_t answer(size_t n) {
    struct header h;
    memcpy(&h, in, HEADER);
    const uint8_t *p = in + HEADER;
    size_t len = n - HEADER, size = HEADER;
    uint8_t *r = out + HEADER;
    uint32_t e = 0;
    switch (h.command) {
    case VERSION: {
        uint16_t v[2] = {0, 0};
        memcpy(r, v, 4);
        memcpy(r + 4, caps, sizeof caps);
        size += 4 + sizeof caps;
        break;
    }
    case GET_INFO: {
        uint32_t info[4] = {16, 1 /* PCI */, 9, 5};
        memcpy(r, info, 16);
        size += 16;
        break;
    }
    case GET_REGION_INFO: {
        uint32_t index;
        if (len < 32) { e = EINVAL; break; }
        memcpy(&index, p + 8, 4);
        uint32_t head[4] = {32, index == 0 ? 3u /* read, write */ : 0u, index, 0};
        uint64_t tail[2] = {index == 0 ? BAR0_SIZE : 0, 0};
        memcpy(r, head, 16);
        memcpy(r + 16, tail, 16);
        size += 32;
        break;
    }
    case GET_IRQ_INFO: {
        uint32_t index;
        if (len < 16) { e = EINVAL; break; }
        memcpy(&index, p + 8, 4);
        uint32_t irq[4] = {16, 0, index, index == 0 ? 1u : 0u};
        memcpy(r, irq, 16);
        size += 16;
        break;
    }
    case REGION_READ:
    case REGION_WRITE: {
        uint64_t offset;
        uint32_t region, count;
        if (len < 16) { e = EINVAL; break; }
        memcpy(&offset, p, 8); memcpy(&region, p + 8, 4); memcpy(&count, p + 12, 4);
        if (region != 0 || offset > BAR0_SIZE || count > BAR0_SIZE - offset) { e = EINVAL; break; }
        memcpy(r, p, 16);
        size += 16;
        if (h.command == REGION_READ) {
            memcpy(r + 16, bar0 + offset, count);
            size += count;
        } else {
            if (len != 16 + (size_t)count) { e = EINVAL; break; }
            memcpy(bar0 + offset, p + 16, count);
        }
        break;
    }
    default:
        e = ENOSYS;
    }
    if (e) size = HEADER;
    struct header reply = {h.id, h.command, (uint32_t)size, REPLY | (e ? ERROR : 0), e};
    memcpy(out, &reply, HEADER);
    return size;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: floor-server SOCKET\n"); return 2; }
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof a.sun_path) { fprintf(stderr, "socket path too long\n"); return 2; }
    strcpy(a.sun_path, argv[1]);
    unlink(argv[1]);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) { perror(argv[1]); return 1; }
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        for (;;) {
            /* A request arrives whole in one recv (the client sends it in one sendmsg). */
            ssize_t n = recv(c, in, sizeof in, 0);
            if (n < HEADER) break;
            struct header h;
            memcpy(&h, in, HEADER);
            if (h.size != (size_t)n) break;
            size_t size = answer((size_t)n);
            if (send(c, out, size, MSG_NOSIGNAL) != (ssize_t)size) break;
        }
        close(c);
    }
}
