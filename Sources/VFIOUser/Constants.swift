/// Flag and index values reused on the wire from Linux's VFIO uapi
/// (include/uapi/linux/vfio.h); Protocol/README.md lists them.
public enum VFIO {
    // DEVICE_GET_INFO flags
    public static let deviceFlagsReset: UInt32 = 1 << 0
    public static let deviceFlagsPCI: UInt32 = 1 << 1

    // Region info flags
    public static let regionFlagRead: UInt32 = 1 << 0
    public static let regionFlagWrite: UInt32 = 1 << 1
    public static let regionFlagMmap: UInt32 = 1 << 2
    public static let regionFlagCaps: UInt32 = 1 << 3

    // Region info capability ids
    public static let regionCapSparseMmap: UInt16 = 1
    public static let regionCapType: UInt16 = 2
    public static let regionCapMSIXMappable: UInt16 = 3

    // PCI region and IRQ indices: RegionIndex and IRQIndex (Vocabulary.swift).

    // IRQ info flags
    public static let irqInfoEventfd: UInt32 = 1 << 0
    public static let irqInfoMaskable: UInt32 = 1 << 1
    public static let irqInfoAutomasked: UInt32 = 1 << 2
    public static let irqInfoNoResize: UInt32 = 1 << 3

    // SET_IRQS flags
    public static let irqSetDataNone: UInt32 = 1 << 0
    public static let irqSetDataBool: UInt32 = 1 << 1
    public static let irqSetDataEventfd: UInt32 = 1 << 2
    public static let irqSetActionMask: UInt32 = 1 << 3
    public static let irqSetActionUnmask: UInt32 = 1 << 4
    public static let irqSetActionTrigger: UInt32 = 1 << 5
    public static let irqSetDataMask: UInt32 = 0x7
    public static let irqSetActionMaskBits: UInt32 = 0x38

    // DMA_MAP flags
    public static let dmaMapRead: UInt32 = 1 << 0
    public static let dmaMapWrite: UInt32 = 1 << 1
    // DMA_UNMAP flags
    public static let dmaUnmapGetDirtyBitmap: UInt32 = 1 << 0
    public static let dmaUnmapAll: UInt32 = 1 << 1

    // DEVICE_FEATURE
    public static let featureMask: UInt32 = 0xffff
    public static let featureGet: UInt32 = 1 << 16
    public static let featureSet: UInt32 = 1 << 17
    public static let featureProbe: UInt32 = 1 << 18
    public static let featureMigration: UInt32 = 1
    public static let featureMigDeviceState: UInt32 = 2
    public static let featureDMALoggingStart: UInt32 = 6
    public static let featureDMALoggingStop: UInt32 = 7
    public static let featureDMALoggingReport: UInt32 = 8
    public static let featureMigDataSize: UInt32 = 9
    public static let migrationStopCopy: UInt64 = 1 << 0
    public static let migrationP2P: UInt64 = 1 << 1
    public static let migrationPreCopy: UInt64 = 1 << 2

    // vfio_device_gfx_plane_info flags (VFIO_GFX_PLANE_TYPE_*)
    public static let gfxPlaneProbe: UInt32 = 1 << 0
    public static let gfxPlaneDmabuf: UInt32 = 1 << 1
    public static let gfxPlaneRegion: UInt32 = 1 << 2
    // DRM plane types (drm_plane_type)
    public static let drmPlaneOverlay: UInt32 = 0
    public static let drmPlanePrimary: UInt32 = 1
    public static let drmPlaneCursor: UInt32 = 2
}

/// Migration v2 device states (VFIO_DEVICE_STATE_*).
public enum DeviceState: UInt32, Sendable, CaseIterable {
    case error = 0
    case stop = 1
    case running = 2
    case stopCopy = 3
    case resuming = 4
    case runningP2P = 5
    case preCopy = 6
    case preCopyP2P = 7

    public var name: String {
        switch self {
        case .error: "ERROR"
        case .stop: "STOP"
        case .running: "RUNNING"
        case .stopCopy: "STOP_COPY"
        case .resuming: "RESUMING"
        case .runningP2P: "RUNNING_P2P"
        case .preCopy: "PRE_COPY"
        case .preCopyP2P: "PRE_COPY_P2P"
        }
    }
}

/// Limits umdev applies to every connection (Protocol/README.md §3).
public enum Limits {
    /// Largest `count` umdev accepts in REGION_READ/WRITE and MIG_DATA.
    public static let maxDataTransfer = 1 << 20
    /// Largest message umdev accepts: a maximal transfer plus its headers.
    public static let maxMessageSize = maxDataTransfer + 64
    /// Descriptors umdev accepts in one message.
    public static let maxMessageFDs = 8
    /// Simultaneous DMA windows per connection.
    public static let maxDMAMaps = 65535
    /// Entries accepted in one REGION_WRITE_MULTI.
    public static let maxWriteMulti = 256
    /// Largest VERSION JSON accepted.
    public static let maxVersionJSON = 4096
    /// DMA page size (the only one offered).
    public static let pageSize: UInt64 = 4096
}
