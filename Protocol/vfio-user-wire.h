/*
 * vfio-user on the wire, as umdev speaks it (see Protocol/README.md).
 *
 * Self-contained: a client author can include this one header. All fields
 * are little-endian on the hosts umdev runs on; structs are packed. Section
 * numbers (§) refer to Protocol/README.md.
 */
#ifndef VFIO_USER_WIRE_H
#define VFIO_USER_WIRE_H

#include <stdint.h>

/* §2 Header */
struct vu_header {
    uint16_t msg_id;
    uint16_t command;
    uint32_t msg_size;  /* header included */
    uint32_t flags;
    uint32_t error;     /* errno when VU_F_ERROR is set in a reply */
} __attribute__((packed));

#define VU_HEADER_SIZE    16u
#define VU_F_TYPE_MASK    0x0fu
#define VU_F_TYPE_COMMAND 0x00u
#define VU_F_TYPE_REPLY   0x01u
#define VU_F_NO_REPLY     0x10u
#define VU_F_ERROR        0x20u

/* §2 Commands */
enum vu_command {
    VU_VERSION = 1,
    VU_DMA_MAP = 2,
    VU_DMA_UNMAP = 3,
    VU_DEVICE_GET_INFO = 4,
    VU_DEVICE_GET_REGION_INFO = 5,
    VU_DEVICE_GET_REGION_IO_FDS = 6,
    VU_DEVICE_GET_IRQ_INFO = 7,
    VU_DEVICE_SET_IRQS = 8,
    VU_REGION_READ = 9,
    VU_REGION_WRITE = 10,
    VU_DMA_READ = 11,
    VU_DMA_WRITE = 12,
    VU_DEVICE_RESET = 13,
    VU_DIRTY_PAGES = 14,
    VU_REGION_WRITE_MULTI = 15,
    VU_DEVICE_FEATURE = 16,
    VU_MIG_DATA_READ = 17,
    VU_MIG_DATA_WRITE = 18,
};

/* §3 Limits umdev applies */
#define VU_MAX_DATA_XFER     (1u << 20)
#define VU_MAX_MSG_SIZE      (VU_MAX_DATA_XFER + 64u)
#define VU_MAX_MSG_FDS       8u
#define VU_MAX_DMA_MAPS      65535u
#define VU_MAX_WRITE_MULTI   256u
#define VU_MAX_VERSION_JSON  4096u
#define VU_PAGE_SIZE         4096u

/* §3 VERSION */
struct vu_version {
    uint16_t major;
    uint16_t minor;
    /* then optional NUL-terminated JSON */
} __attribute__((packed));

/* §4 DMA_MAP / DMA_UNMAP */
struct vu_dma_map {
    uint32_t argsz;   /* 32 */
    uint32_t flags;
    uint64_t offset;
    uint64_t addr;
    uint64_t size;
} __attribute__((packed));
#define VU_DMA_READ_FLAG   (1u << 0)
#define VU_DMA_WRITE_FLAG  (1u << 1)

struct vu_dma_unmap {
    uint32_t argsz;   /* ≥ 24 */
    uint32_t flags;
    uint64_t addr;
    uint64_t size;
} __attribute__((packed));
#define VU_UNMAP_GET_DIRTY_BITMAP (1u << 0)
#define VU_UNMAP_ALL              (1u << 1)

/* §5 DEVICE_GET_INFO */
struct vu_device_info {
    uint32_t argsz;
    uint32_t flags;
    uint32_t num_regions;
    uint32_t num_irqs;
} __attribute__((packed));
#define VU_DEVICE_FLAGS_RESET (1u << 0)
#define VU_DEVICE_FLAGS_PCI   (1u << 1)

/* §6 DEVICE_GET_REGION_INFO */
struct vu_region_info {
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t cap_offset;
    uint64_t size;
    uint64_t offset;
} __attribute__((packed));
#define VU_REGION_FLAG_READ  (1u << 0)
#define VU_REGION_FLAG_WRITE (1u << 1)
#define VU_REGION_FLAG_MMAP  (1u << 2)
#define VU_REGION_FLAG_CAPS  (1u << 3)

struct vu_cap_header {
    uint16_t id;
    uint16_t version;
    uint32_t next;  /* offset from the start of vu_region_info; 0 ends */
} __attribute__((packed));
#define VU_CAP_SPARSE_MMAP    1
#define VU_CAP_TYPE           2
#define VU_CAP_MSIX_MAPPABLE  3

struct vu_sparse_area { uint64_t offset; uint64_t size; } __attribute__((packed));
struct vu_cap_sparse_mmap {
    struct vu_cap_header header;
    uint32_t nr_areas;
    uint32_t reserved;
    /* then nr_areas × vu_sparse_area */
} __attribute__((packed));
struct vu_cap_type {
    struct vu_cap_header header;
    uint32_t type;
    uint32_t subtype;
} __attribute__((packed));
/* TYPE values of umdev's device-specific regions (§21). */
#define VU_REGION_TYPE_GFX              1
#define VU_REGION_SUBTYPE_GFX_EDID      1
#define VU_REGION_TYPE_PCI_VENDOR_TYPE  (1u << 31)
#define VU_REGION_TYPE_MDPY_DISPLAY     (VU_REGION_TYPE_PCI_VENDOR_TYPE | 0x1b36)
#define VU_REGION_SUBTYPE_MDPY_DISPLAY  1

/* The start of an EDID region (§21): the kernel's vfio_region_gfx_edid. */
struct vu_gfx_edid {
    uint32_t edid_offset;
    uint32_t edid_max_size;
    uint32_t edid_size;
    uint32_t max_xres;
    uint32_t max_yres;
    uint32_t link_state;
} __attribute__((packed));
#define VU_GFX_LINK_STATE_UP    1
#define VU_GFX_LINK_STATE_DOWN  2

/* umdev's display-plane extension (§22), negotiated with the VERSION
   capability "x-umdev-gfx-plane": {"version": 1}. */
#define VU_GFX_PLANE_CAPABILITY   "x-umdev-gfx-plane"
#define VU_QUERY_GFX_PLANE        0x7f00
#define VU_GET_GFX_DMABUF         0x7f01

#define VU_GFX_PLANE_TYPE_PROBE   (1u << 0)
#define VU_GFX_PLANE_TYPE_DMABUF  (1u << 1)
#define VU_GFX_PLANE_TYPE_REGION  (1u << 2)
#define VU_DRM_PLANE_TYPE_OVERLAY 0
#define VU_DRM_PLANE_TYPE_PRIMARY 1
#define VU_DRM_PLANE_TYPE_CURSOR  2
#define VU_DRM_FORMAT_XRGB8888    0x34325258u  /* 'XR24' */
#define VU_DRM_FORMAT_BGRX8888    0x34325842u  /* 'BX24' */
#define VU_DRM_FORMAT_RGB565      0x36314752u  /* 'RG16' */

/* The kernel's struct vfio_device_gfx_plane_info. */
struct vu_gfx_plane_info {
    uint32_t argsz;           /* 60..64, at most the payload length */
    uint32_t flags;           /* VU_GFX_PLANE_TYPE_* */
    uint32_t drm_plane_type;  /* VU_DRM_PLANE_TYPE_* */
    uint32_t drm_format;      /* out: fourcc, 0 = nothing shown */
    uint64_t drm_format_mod;  /* out: 0 */
    uint32_t width;
    uint32_t height;
    uint32_t stride;
    uint32_t size;
    uint32_t x_pos;
    uint32_t y_pos;
    uint32_t x_hot;
    uint32_t y_hot;
    uint32_t id;              /* region_index or dmabuf_id */
    uint32_t reserved;
} __attribute__((packed));
#define VU_GFX_PLANE_INFO_MIN 60   /* offsetofend(region_index) */

/* GET_GFX_DMABUF reply; one descriptor (the VRAM memfd) comes with it. */
struct vu_gfx_dmabuf {
    uint32_t dmabuf_id;
    uint32_t reserved;
    uint64_t offset;          /* page-aligned start of the buffer in the file */
    uint64_t size;            /* stride x height */
} __attribute__((packed));

#define VU_PCI_BAR0_REGION   0
#define VU_PCI_ROM_REGION    6
#define VU_PCI_CONFIG_REGION 7
#define VU_PCI_VGA_REGION    8
#define VU_PCI_NUM_REGIONS   9

/* §7 DEVICE_GET_REGION_IO_FDS (umdev answers count 0) */
struct vu_region_io_fds {
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t count;
} __attribute__((packed));

/* §8 DEVICE_GET_IRQ_INFO */
struct vu_irq_info {
    uint32_t argsz;
    uint32_t flags;
    uint32_t index;
    uint32_t count;
} __attribute__((packed));
#define VU_IRQ_INFO_EVENTFD    (1u << 0)
#define VU_IRQ_INFO_MASKABLE   (1u << 1)
#define VU_IRQ_INFO_AUTOMASKED (1u << 2)
#define VU_IRQ_INFO_NORESIZE   (1u << 3)
#define VU_PCI_INTX_IRQ 0
#define VU_PCI_MSI_IRQ  1
#define VU_PCI_MSIX_IRQ 2
#define VU_PCI_ERR_IRQ  3
#define VU_PCI_REQ_IRQ  4

/* §9 DEVICE_SET_IRQS */
struct vu_irq_set {
    uint32_t argsz;  /* = payload size */
    uint32_t flags;
    uint32_t index;
    uint32_t start;
    uint32_t count;
    /* then count bytes for DATA_BOOL; eventfds travel as SCM_RIGHTS */
} __attribute__((packed));
#define VU_IRQ_SET_DATA_NONE      (1u << 0)
#define VU_IRQ_SET_DATA_BOOL      (1u << 1)
#define VU_IRQ_SET_DATA_EVENTFD   (1u << 2)
#define VU_IRQ_SET_ACTION_MASK    (1u << 3)
#define VU_IRQ_SET_ACTION_UNMASK  (1u << 4)
#define VU_IRQ_SET_ACTION_TRIGGER (1u << 5)

/* §10 REGION_READ / REGION_WRITE */
struct vu_region_access {
    uint64_t offset;
    uint32_t region;
    uint32_t count;
    /* then count bytes (write request, read reply) */
} __attribute__((packed));

/* §11 REGION_WRITE_MULTI */
struct vu_write_multi_entry {
    uint64_t offset;
    uint32_t region;
    uint32_t count;   /* 1..8 */
    uint8_t data[8];
} __attribute__((packed));

/* §12 DMA_READ / DMA_WRITE (server → client), spec layout */
struct vu_dma_rw {
    uint64_t addr;
    uint64_t count;
    /* then data */
} __attribute__((packed));

/* §14 DEVICE_FEATURE */
struct vu_device_feature {
    uint32_t argsz;
    uint32_t flags;
    /* then data */
} __attribute__((packed));
#define VU_FEATURE_MASK   0xffffu
#define VU_FEATURE_GET    (1u << 16)
#define VU_FEATURE_SET    (1u << 17)
#define VU_FEATURE_PROBE  (1u << 18)
#define VU_FEATURE_MIGRATION        1
#define VU_FEATURE_MIG_DEVICE_STATE 2
#define VU_FEATURE_DMA_LOGGING_START  6
#define VU_FEATURE_DMA_LOGGING_STOP   7
#define VU_FEATURE_DMA_LOGGING_REPORT 8
#define VU_FEATURE_MIG_DATA_SIZE      9
#define VU_MIGRATION_STOP_COPY (1ull << 0)
#define VU_MIGRATION_P2P       (1ull << 1)
#define VU_MIGRATION_PRE_COPY  (1ull << 2)

enum vu_device_state {
    VU_STATE_ERROR = 0,
    VU_STATE_STOP = 1,
    VU_STATE_RUNNING = 2,
    VU_STATE_STOP_COPY = 3,
    VU_STATE_RESUMING = 4,
    VU_STATE_RUNNING_P2P = 5,
    VU_STATE_PRE_COPY = 6,
    VU_STATE_PRE_COPY_P2P = 7,
};

/* §15 MIG_DATA_READ / MIG_DATA_WRITE */
struct vu_mig_data {
    uint32_t argsz;
    uint32_t size;
    /* then data */
} __attribute__((packed));

#endif
