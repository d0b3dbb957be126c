import Glibc
import PCI

/// The Linux mdpy sample (samples/vfio-mdev/mdpy.c): a display whose picture
/// is a plain framebuffer in BAR0, described by a vendor capability that the
/// sample's `mdpy-fb` guest driver reads. The host sees the picture as a
/// region plane.
///
/// Differences from the sample are listed in Samples/MDPY/README.md.
public final class MDPY: DisplayDevice {
    // MARK: Identity (mdpy.c: mdpy_create_config_space, mdpy-defs.h)
    public static let vendorID: UInt16 = 0x1b36           // Red Hat
    public static let deviceID: UInt16 = 0x000f           // mdpy
    public static let subsystemVendorID: UInt16 = 0x1af4  // Red Hat Qumranet
    public static let subsystemID: UInt16 = 0x1100        // QEMU
    public static let classCode: UInt32 = 0x038000        // display controller, other
    public static let revision: UInt8 = 0x01
    /// The vendor capability's place and its fields (mdpy-defs.h).
    public static let capabilityOffset = 0x40
    public static let formatOffset = 0x44
    public static let widthOffset = 0x48
    public static let heightOffset = 0x4c

    /// The display region: an alias of BAR0 inside num_regions, which a
    /// vfio-user client can reach (the sample's index 16 is outside it).
    public static let displayRegion = RegionIndex.firstDeviceSpecific
    /// Its VFIO_REGION_INFO_CAP_TYPE: a Red Hat vendor type, subtype 1
    /// "framebuffer" (Protocol/README.md §21).
    public static let displayRegionType = (type: RegionType.vendor(vendorID), subtype: UInt32(1))

    public let type: MDPYType
    @exclusivity(unchecked) public private(set) var config = ConfigSpace()
    private let initialConfig: ConfigSpace
    /// The framebuffer: BAR0 and the display region, mapped by the client.
    public let framebuffer: SharedMemory
    public let regions: [Region]
    /// No interrupts of its own; ERR and REQ as kernel vfio-pci offers them.
    public let irqs: [IRQ] = [.none, .none, .none, .error, .request]
    /// Unlike the sample, reset is advertised (it repaints the gradient).
    public let supportsReset = true
    public weak var interrupts: InterruptSink?
    public weak var dma: DMAAccess?
    public let planeKind = DisplayPlane.Kind.region
    public let planes = PlanePublisher(kind: .region)
    public var planeMemory: SharedMemory { framebuffer }
    /// The one plane this device ever shows.
    public let plane: DisplayPlane

    public init(type: MDPYType) throws(DeviceError) {
        self.type = type
        framebuffer = try SharedMemory(name: "umdev-\(type.name)", size: Int(type.framebufferSize))

        config.setIdentity(vendor: Self.vendorID, device: Self.deviceID, subsystemVendor: Self.subsystemVendorID,
                           subsystem: Self.subsystemID, classCode: Self.classCode, revision: Self.revision)
        config.set16(ConfigSpace.Offset.command, ConfigSpace.CommandBit.io | ConfigSpace.CommandBit.memory)
        config.setBAR(RegionIndex.bar0, BAR(.memory32, size: type.framebufferSize, prefetchable: true))
        // Vendor capability: id 9, next 0, length 16, one pad byte, then
        // format, width, height (little-endian u32 each).
        var fields: [UInt8] = [0]
        for v in [DRMFormat.xrgb8888, type.width, type.height] {
            for i in 0..<4 { fields.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
        }
        let at = config.addVendorSpecific(fields)
        precondition(at == Self.capabilityOffset)
        initialConfig = config

        let mapping = Region.Mapping(fd: framebuffer.fd)
        var r = [Region](repeating: .absent, count: Self.displayRegion + 1)
        r[RegionIndex.bar0] = Region(size: type.framebufferSize, mapping: mapping)
        r[RegionIndex.config] = Region(size: 256)
        r[Self.displayRegion] = Region(size: type.framebufferSize, mapping: mapping, type: Self.displayRegionType)
        regions = r

        plane = DisplayPlane(kind: .region, fourcc: DRMFormat.xrgb8888, width: type.width, height: type.height,
                             stride: type.stride, size: UInt64(type.stride) * UInt64(type.height),
                             region: Self.displayRegion, offset: 0, id: 1)
        // A framebuffer taken over on a live upgrade holds the guest's picture.
        if !framebuffer.wasHandedOver { paintGradient() }
        planes.publish(plane)
    }

    // MARK: Region access

    public func read(region: Int, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: buffer.count) else { return EINVAL }
        switch region {
        case RegionIndex.config:
            config.read(offset: Int(offset), into: buffer)
        case RegionIndex.bar0, Self.displayRegion:
            // The sample copies from the start of the buffer whatever the
            // offset; the offset is honoured here.
            buffer.baseAddress!.copyMemory(from: framebuffer.base + Int(offset), byteCount: buffer.count)
        default:
            return EINVAL
        }
        return 0
    }

    /// Nothing of mdpy changes when read: the framebuffer and config space are plain storage.
    public func readChangesState(region: Int, offset: UInt64, count: Int) -> Bool { false }

    public func write(region: Int, offset: UInt64, data: UnsafeRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: data.count) else { return EINVAL }
        switch region {
        case RegionIndex.config:
            config.write(offset: Int(offset), data: data)
        case RegionIndex.bar0, Self.displayRegion:
            (framebuffer.base + Int(offset)).copyMemory(from: data.baseAddress!, byteCount: data.count)
        default:
            return EINVAL
        }
        return 0
    }

    // MARK: Display

    /// The sample's power-on picture: row y filled with the byte y·255/height
    /// (all four bytes of each pixel), so a gray ramp from black at the top.
    private func paintGradient() {
        let stride = Int(type.stride)
        for y in 0..<Int(type.height) {
            memset(framebuffer.base + y * stride, Int32(y * 255 / Int(type.height)), stride)
        }
    }

    // MARK: Migration

    public static let model = "umdev.mdpy"
    static let stateMagic = "MDPY"
    public static let stateVersion = 1
    public var migrationIdentity: MigrationIdentity? { Self.migrationIdentity(type: type) }
    public var readableStateVersions: ClosedRange<Int> { Self.readableStateVersions }

    /// What an mdpy of `type` puts in its migration streams: the one place
    /// the catalog and a resume both read it from.
    public static func migrationIdentity(type: MDPYType) -> MigrationIdentity {
        MigrationIdentity(model: model, version: stateVersion, type: type.name,
                          parameters: ["width": "\(type.width)", "height": "\(type.height)"])
    }
    /// The state versions this build reads.
    public static let readableStateVersions = stateVersion...stateVersion

    /// "MDPY", u16 version, config space, then the framebuffer's pages.
    public func saveState() -> [UInt8] {
        var w = StateWriter(magic: Self.stateMagic, version: Self.stateVersion)
        w.raw(config.bytes)
        w.raw(framebuffer.savePages())
        return w.bytes
    }

    public func restoreState(_ bytes: [UInt8], version: Int) throws(DeviceError) {
        var r = try StateReader(bytes, magic: Self.stateMagic, what: "mdpy", version: version, readable: Self.readableStateVersions)
        let cfg = try r.raw(initialConfig.size)
        r.skip(to: try framebuffer.restorePages(bytes, at: r.position))
        try r.finish()
        config = initialConfig
        config.setBytes(0, cfg)
    }

    // MARK: Lifecycle

    /// Repaints the gradient (destroying what the guest drew, as the sample
    /// does) and returns config space to its power-on state.
    public func reset() {
        paintGradient()
        config = initialConfig
    }
}

/// An mdpy type: a fixed resolution, XRGB8888, stride width × 4.
public struct MDPYType: Sendable, Equatable {
    /// The mdev type name, e.g. "mdpy-vga".
    public let name: String
    public let width: UInt32
    public let height: UInt32

    /// The sample's description.
    public var description: String { "virtual display, \(width)x\(height) framebuffer" }
    public var stride: UInt32 { width * 4 }
    /// BAR0: the picture's bytes rounded up to a power of two (a BAR must be one).
    public var framebufferSize: UInt64 {
        let bytes = UInt64(stride) * UInt64(height)
        return bytes.nonzeroBitCount == 1 ? bytes : 1 << (64 - (bytes - 1).leadingZeroBitCount)
    }

    public static let vga = MDPYType(name: "mdpy-vga", width: 640, height: 480)
    public static let xga = MDPYType(name: "mdpy-xga", width: 1024, height: 768)
    public static let hd = MDPYType(name: "mdpy-hd", width: 1920, height: 1080)
    public static let all = [vga, xga, hd]
}
