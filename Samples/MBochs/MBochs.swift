import Glibc
import PCI

/// The Linux mbochs sample (samples/vfio-mdev/mbochs.c): QEMU's
/// bochs-display as a mediated device, so the stock `bochs` DRM driver
/// binds it. VRAM is BAR0; the DISPI (VBE) registers, QEMU's extended
/// registers and the EDID the guest reads are in BAR2; the host writes
/// the EDID through a device-specific region. The host sees the picture
/// as a dmabuf plane: a buffer inside VRAM, named by an id.
///
/// Differences from the sample are listed in Samples/MBochs/README.md.
public final class MBochs: DisplayDevice {
    // MARK: Identity (mbochs.c: mbochs_create_config_space)
    public static let vendorID: UInt16 = 0x1234           // QEMU / Bochs stdvga
    public static let deviceID: UInt16 = 0x1111
    public static let subsystemVendorID: UInt16 = 0x1af4  // Red Hat Qumranet
    public static let subsystemID: UInt16 = 0x1100        // QEMU
    public static let classCode: UInt32 = 0x038000        // display controller, other
    /// The sample's revision; the guest driver reads QEMU's extended
    /// registers only at revision 2 or later.
    public static let revision: UInt8 = 0x01

    // MARK: Regions
    /// BAR0: VRAM, a sparse memfd the client maps.
    public static let vramRegion = RegionIndex.bar0
    /// BAR2: 4 KiB of registers, trapped.
    public static let mmioRegion = RegionIndex.bar2
    public static let mmioSize = 4096
    /// The EDID region, with TYPE capability GFX/EDID.
    public static let edidRegion = RegionIndex.firstDeviceSpecific

    /// BAR2 layout (QEMU's PCI_VGA_* in bochs-vbe.h).
    public enum MMIO {
        /// The EDID blob the guest reads (0x000–0x3ff).
        public static let edid = 0x000..<0x400
        /// VGA ports 0x3c0–0x3df (nothing there on bochs-display).
        public static let vgaPorts = 0x400..<0x420
        /// DISPI registers, 16-bit, register i at 0x500 + 2·i.
        public static let dispi = 0x500..<(0x500 + 2 * DispiRegisters.Index.count)
        /// QEMU's extended registers, 32-bit: size, then byte order.
        public static let extended = 0x600..<0x608
        public static let extendedSize = 0x600
        public static let extendedByteOrder = 0x604
    }

    public let type: MBochsType
    @exclusivity(unchecked) public private(set) var config = ConfigSpace()
    private let initialConfig: ConfigSpace
    public let vram: SharedMemory
    @exclusivity(unchecked) public private(set) var dispi: DispiRegisters
    @exclusivity(unchecked) public private(set) var edid: EDIDRegion
    /// The id the next new layout gets.
    @exclusivity(unchecked) public private(set) var nextPlaneID: UInt32 = 1
    /// The plane last published (compared on every register write, so a
    /// repeated identical mode set publishes nothing).
    @exclusivity(unchecked) public private(set) var plane = DisplayPlane.disabled(.dmabuf)

    public let regions: [Region]
    /// No interrupts of its own; ERR and REQ as kernel vfio-pci offers them.
    public let irqs: [IRQ] = [.none, .none, .none, .error, .request]
    /// Unlike the sample, reset is advertised (QEMU then resets the
    /// registers on a guest reboot).
    public let supportsReset = true
    public weak var interrupts: InterruptSink?
    public weak var dma: DMAAccess?
    public let planeKind = DisplayPlane.Kind.dmabuf
    public let planes = PlanePublisher(kind: .dmabuf)
    public var planeMemory: SharedMemory { vram }

    /// The largest mode the EDID offers (max_xres, max_yres); 0×0 is no limit.
    public let edidMax: (width: UInt32, height: UInt32)

    /// `edidMax` replaces the type's EDID maximum (a creation attribute).
    public init(type: MBochsType, edidMax: (width: UInt32, height: UInt32)? = nil) throws(DeviceError) {
        self.type = type
        let limit = edidMax ?? (type.maxWidth, type.maxHeight)
        self.edidMax = limit
        vram = try SharedMemory(name: "umdev-\(type.name)-vram", size: Int(type.vramSize))
        dispi = DispiRegisters(vramSize: type.vramSize)
        edid = EDIDRegion(maxXres: limit.width, maxYres: limit.height,
                          initial: Self.defaultEDID(limit: limit, preferred: nil))

        config.setIdentity(vendor: Self.vendorID, device: Self.deviceID, subsystemVendor: Self.subsystemVendorID,
                           subsystem: Self.subsystemID, classCode: Self.classCode, revision: Self.revision)
        config.set16(ConfigSpace.Offset.command, ConfigSpace.CommandBit.io | ConfigSpace.CommandBit.memory)
        config.setBAR(Self.vramRegion, BAR(.memory32, size: type.vramSize, prefetchable: true))
        config.setBAR(Self.mmioRegion, BAR(.memory32, size: UInt64(Self.mmioSize)))
        initialConfig = config

        var r = [Region](repeating: .absent, count: Self.edidRegion + 1)
        r[Self.vramRegion] = Region(size: type.vramSize, mapping: Region.Mapping(fd: vram.fd))
        r[Self.mmioRegion] = Region(size: UInt64(Self.mmioSize))
        r[RegionIndex.config] = Region(size: 256)
        r[Self.edidRegion] = Region(size: UInt64(EDIDRegion.regionSize),
                                    type: (RegionType.graphics, RegionType.graphicsEDID))
        regions = r
        planes.publish(plane)
    }

    // MARK: Region access

    public func read(region: Int, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: buffer.count) else { return EINVAL }
        switch region {
        case Self.mmioRegion:
            readMMIO(Int(offset), into: buffer)
        case Self.vramRegion:
            // The sample offsets trapped VRAM accesses by the wrong BAR; the
            // offset is honoured here.
            buffer.baseAddress!.copyMemory(from: vram.base + Int(offset), byteCount: buffer.count)
        case RegionIndex.config:
            config.read(offset: Int(offset), into: buffer)
        case Self.edidRegion:
            return edid.read(offset: Int(offset), into: buffer)
        default:
            return EINVAL
        }
        return 0
    }

    /// Nothing of mbochs changes when read: DISPI, EDID, VRAM and config space are plain storage.
    public func readChangesState(region: Int, offset: UInt64, count: Int) -> Bool { false }

    public func write(region: Int, offset: UInt64, data: UnsafeRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: data.count) else { return EINVAL }
        switch region {
        case Self.mmioRegion:
            writeMMIO(Int(offset), data)
        case Self.vramRegion:
            (vram.base + Int(offset)).copyMemory(from: data.baseAddress!, byteCount: data.count)
        case RegionIndex.config:
            config.write(offset: Int(offset), data: data)
        case Self.edidRegion:
            return edid.write(offset: Int(offset), data: data)
        default:
            return EINVAL
        }
        return 0
    }

    // MARK: BAR2

    /// BAR2 reads. The guest driver reads DISPI 16 bits, the extended
    /// registers 32 bits and the EDID a byte at a time; other widths read
    /// byte by byte from the same registers. Holes read all-ones, as they do
    /// on QEMU's device; an extended register read narrower than 32 bits
    /// reads 0, as QEMU answers an access of a size its registers refuse.
    private func readMMIO(_ offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        if buffer.count == 2, offset & 1 == 0, MMIO.dispi.contains(offset) {
            buffer.storeBytes(of: dispi.read((offset - MMIO.dispi.lowerBound) / 2).littleEndian, as: UInt16.self)
            return
        }
        let end = offset + buffer.count
        for i in 0..<buffer.count {
            let o = offset + i
            switch o {
            case MMIO.edid:
                buffer[i] = edid.guestByte(o)
            case MMIO.dispi:
                let value = dispi.read((o - MMIO.dispi.lowerBound) / 2)
                buffer[i] = UInt8(truncatingIfNeeded: o & 1 == 0 ? value : value >> 8)
            case MMIO.extended:
                let dword = o & ~3
                guard dword >= offset, dword + 4 <= end else { buffer[i] = 0; continue }
                let value = dword == MMIO.extendedSize ? DispiRegisters.Extended.size : dispi.byteOrder
                buffer[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(o - dword)))
            default:
                buffer[i] = 0xff
            }
        }
    }

    /// BAR2 writes: DISPI registers take the bytes written (byte lanes merge
    /// into the 16-bit register), the byte-order register takes a whole
    /// 32-bit write; everything else is read-only or empty and ignores them.
    private func writeMMIO(_ offset: Int, _ data: UnsafeRawBufferPointer) {
        var scanoutTouched = false
        if data.count == 2, offset & 1 == 0, MMIO.dispi.contains(offset) {
            scanoutTouched = dispi.write((offset - MMIO.dispi.lowerBound) / 2, UInt16(littleEndian: data.loadUnaligned(as: UInt16.self)))
        } else {
            for i in 0..<data.count where MMIO.dispi.contains(offset + i) {
                let o = offset + i
                let index = (o - MMIO.dispi.lowerBound) / 2
                var value = dispi.read(index)
                value = o & 1 == 0 ? (value & 0xff00) | UInt16(data[i]) : (value & 0x00ff) | UInt16(data[i]) << 8
                if dispi.write(index, value) { scanoutTouched = true }
            }
            let order = MMIO.extendedByteOrder
            if offset <= order, offset + data.count >= order + 4,
               dispi.writeByteOrder(UInt32(littleEndian: data.loadUnaligned(fromByteOffset: order - offset, as: UInt32.self))) {
                scanoutTouched = true
            }
        }
        // Only a change to a register the scanout depends on can change the plane.
        if scanoutTouched { updatePlane() }
    }

    // MARK: Display

    /// Derives the scanout from the registers and publishes it when the
    /// layout changed. A layout shown recently gets its old id back (a guest
    /// flipping between two buffers shows two ids), a new one the next id;
    /// ids are never 0 and wrap past UInt32.max.
    private func updatePlane() {
        var next = DisplayPlane.disabled(.dmabuf)
        if let layout = dispi.scanout(region: Self.vramRegion) {
            if plane.sameLayout(as: layout) {
                next = plane
            } else if let known = planes.recentID(sameLayoutAs: layout) {
                next = layout
                next.id = known
            } else {
                next = layout
                next.id = nextPlaneID
                nextPlaneID = nextPlaneID == .max ? 1 : nextPlaneID + 1
            }
        }
        guard next != plane else { return }
        plane = next
        planes.publish(next)
    }

    // MARK: EDID from the host

    /// The power-on EDID: preferring `preferred`, or the maximum (1024x768
    /// without one), and listing nothing beyond the maximum.
    static func defaultEDID(limit: (width: UInt32, height: UInt32), preferred: (width: UInt32, height: UInt32)?) -> [UInt8] {
        let noLimit = limit.width == 0 || limit.height == 0
        let mode = preferred ?? (noLimit ? (1024, 768) : limit)
        return EDID.generate(preferred: EDID.Mode(Int(mode.width), Int(mode.height)),
                             limit: noLimit ? nil : EDID.Mode(Int(limit.width), Int(limit.height)), name: "umdev mbochs")
    }

    /// What a host EDID writer does when a viewer's window changes size (as
    /// QEMU's display code does): link down, a new EDID preferring this
    /// mode, link up. The guest sees it on its next connector probe.
    public func preferResolution(width: UInt32, height: UInt32) throws(DeviceError) {
        guard width >= DispiRegisters.minimumSize, height >= DispiRegisters.minimumSize, width <= 4095, height <= 4095,
              edidMax.width == 0 || (width <= edidMax.width && height <= edidMax.height) else {
            throw DeviceError(EINVAL, "\(width)x\(height) is not a mode this device offers (at most \(edidMax.width)x\(edidMax.height))")
        }
        let blob = Self.defaultEDID(limit: edidMax, preferred: (width, height))
        let field = EDIDRegion.Field.self
        for (offset, value) in [(field.linkState, EDIDRegion.Link.down), (field.edidSize, UInt32(blob.count))] {
            let e = withUnsafeBytes(of: value.littleEndian) { edid.write(offset: offset, data: $0) }
            guard e == 0 else { throw DeviceError(e, "EDID update refused") }
        }
        let e = blob.withUnsafeBytes { edid.write(offset: EDIDRegion.blobOffset, data: $0) }
        let up = withUnsafeBytes(of: EDIDRegion.Link.up.littleEndian) { edid.write(offset: field.linkState, data: $0) }
        guard e == 0, up == 0 else { throw DeviceError(e != 0 ? e : up, "EDID update refused") }
    }

    /// The mode the current EDID prefers (its first detailed timing).
    public var preferredResolution: (width: Int, height: Int)? {
        EDID.detailedModes(Array(edid.guestBlob)).first.map { ($0.width, $0.height) }
    }

    // MARK: Migration

    public static let model = "umdev.mbochs"
    static let stateMagic = "MBOC"
    public static let stateVersion = 1
    public var migrationIdentity: MigrationIdentity? { Self.migrationIdentity(type: type, edidMax: edidMax) }
    public var readableStateVersions: ClosedRange<Int> { Self.readableStateVersions }

    /// What an mbochs of `type` whose EDID offers at most `edidMax` puts in
    /// its migration streams: the one place the catalog and a resume both
    /// read it from.
    public static func migrationIdentity(type: MBochsType, edidMax: (width: UInt32, height: UInt32)) -> MigrationIdentity {
        MigrationIdentity(model: model, version: stateVersion, type: type.name,
                          parameters: ["vram_mib": "\(type.vramMiB)", "edid_max": "\(edidMax.width)x\(edidMax.height)"])
    }
    /// The state versions this build reads.
    public static let readableStateVersions = stateVersion...stateVersion

    /// "MBOC", u16 version, config space, the ten DISPI registers, the byte
    /// order, the EDID (size, link, 1 KiB blob), then VRAM's pages that hold
    /// anything (an idle VRAM stays sparse and costs nothing to move).
    public func saveState() -> [UInt8] {
        var w = StateWriter(magic: Self.stateMagic, version: Self.stateVersion)
        w.raw(config.bytes)
        for v in dispi.storedValues { w.u16(v) }
        w.u8(dispi.bigEndianFramebuffer ? 1 : 0)
        w.u32(edid.edidSize)
        w.u32(edid.linkState)
        w.raw(edid.blobBytes)
        w.raw(vram.savePages())
        return w.bytes
    }

    public func restoreState(_ bytes: [UInt8], version: Int) throws(DeviceError) {
        var r = try StateReader(bytes, magic: Self.stateMagic, what: "mbochs", version: version, readable: Self.readableStateVersions)
        let cfg = try r.raw(initialConfig.size)
        var registers: [UInt16] = []
        for _ in 0..<DispiRegisters.Index.storedCount { registers.append(try r.u16()) }
        let bigEndian = try r.u8() != 0
        let size = try r.u32(), link = try r.u32()
        let blob = try r.raw(EDIDRegion.maxBlobSize)
        guard size <= UInt32(EDIDRegion.maxBlobSize), link == EDIDRegion.Link.up || link == EDIDRegion.Link.down else {
            throw DeviceError(EINVAL, "mbochs state has a malformed EDID")
        }
        r.skip(to: try vram.restorePages(bytes, at: r.position))
        try r.finish()
        config = initialConfig
        config.setBytes(0, cfg)
        dispi = DispiRegisters(vramSize: type.vramSize, stored: registers, bigEndianFramebuffer: bigEndian)
        edid.restore(blob: blob, size: size, link: link)
        updatePlane()
    }

    public func adoptNextPlaneID(_ id: UInt32) -> Bool {
        guard id != 0 else { return false }
        nextPlaneID = id
        return true
    }

    // MARK: Lifecycle

    /// The sample's reset: every DISPI register to 0 (ID and VIDEO_MEMORY_64K
    /// read their fixed values), little-endian framebuffer, config space to
    /// power-on. VRAM and the EDID are left as they are.
    public func reset() {
        dispi = DispiRegisters(vramSize: type.vramSize)
        config = initialConfig
        updatePlane()
    }
}

/// An mbochs type: how much VRAM, and the largest mode its EDID offers.
public struct MBochsType: Sendable, Equatable {
    /// The mdev type name, e.g. "mbochs-small".
    public let name: String
    public let vramMiB: Int
    /// EDID max_xres/max_yres; 0 means no limit.
    public let maxWidth: UInt32
    public let maxHeight: UInt32

    /// The sample's description.
    public var description: String { "virtual display, \(vramMiB) MB video memory" }
    public var vramSize: UInt64 { UInt64(vramMiB) << 20 }
    /// The mode the power-on EDID prefers: the maximum, or 1024x768 when
    /// there is none (the bochs driver's own default).
    public var defaultMode: (width: UInt32, height: UInt32) {
        maxWidth == 0 || maxHeight == 0 ? (1024, 768) : (maxWidth, maxHeight)
    }

    public static let small = MBochsType(name: "mbochs-small", vramMiB: 4, maxWidth: 800, maxHeight: 600)
    public static let medium = MBochsType(name: "mbochs-medium", vramMiB: 16, maxWidth: 1920, maxHeight: 1440)
    public static let large = MBochsType(name: "mbochs-large", vramMiB: 64, maxWidth: 0, maxHeight: 0)
    public static let all = [small, medium, large]
}
