/// The names the wire, the devices and the clients share, each defined
/// here once: region and IRQ indices, DRM fourcc codes, plane kinds.

/// Region indices of a PCI device (VFIO_PCI_*_REGION_INDEX); indices from
/// `firstDeviceSpecific` on are the device's own (EDID, display, ...).
public enum RegionIndex {
    public static let bar0 = 0
    public static let bar1 = 1
    public static let bar2 = 2
    public static let bar3 = 3
    public static let bar4 = 4
    public static let bar5 = 5
    public static let rom = 6
    public static let config = 7
    public static let vga = 8
    /// The first index after the nine PCI ones.
    public static let firstDeviceSpecific = 9
    /// How many a device without device-specific regions reports.
    public static let pciCount = 9
}

/// IRQ indices of a PCI device (VFIO_PCI_*_IRQ_INDEX): INTx, MSI, MSI-X,
/// error reporting, device release request.
public enum IRQIndex: Int, Sendable, CaseIterable {
    case intx = 0, msi = 1, msix = 2, err = 3, req = 4

    /// As the wire carries it.
    public var wire: UInt32 { UInt32(rawValue) }
}

/// DRM fourcc codes (include/uapi/drm/drm_fourcc.h) that umdev's planes use.
public enum DRMFormat {
    /// 'XR24': 32-bit x:R:G:B, little-endian (blue in the first byte).
    public static let xrgb8888: UInt32 = 0x3432_5258
    /// 'BX24': 32-bit B:G:R:x, little-endian (bochs with a big-endian framebuffer).
    public static let bgrx8888: UInt32 = 0x3432_5842
    /// 'RG16': 16-bit R:G:B 5:6:5, little-endian.
    public static let rgb565: UInt32 = 0x3631_4752

    /// Bytes per pixel of the formats above; nil for any other code.
    public static func bytesPerPixel(_ fourcc: UInt32) -> Int? {
        switch fourcc {
        case xrgb8888, bgrx8888: 4
        case rgb565: 2
        default: nil
        }
    }

    /// The four characters of a fourcc ("XR24"), or "none" for 0.
    public static func name(_ fourcc: UInt32) -> String {
        guard fourcc != 0 else { return "none" }
        let chars = (0..<4).map { UInt8(truncatingIfNeeded: fourcc >> (8 * UInt32($0))) }
        guard chars.allSatisfy({ (0x20..<0x7f).contains($0) }) else { return "0x" + String(fourcc, radix: 16) }
        return String(decoding: chars, as: UTF8.self)
    }
}

/// How a client reaches a display plane's pixels
/// (VFIO_GFX_PLANE_TYPE_REGION / _DMABUF).
public enum PlaneKind: UInt8, Sendable, Equatable {
    case region = 1, dmabuf = 2

    /// Its QUERY_GFX_PLANE flag.
    public var flag: UInt32 { self == .region ? VFIO.gfxPlaneRegion : VFIO.gfxPlaneDmabuf }
}
