import Glibc
import PCI

/// A device for testing the server without a real device model. Its layout
/// mirrors the server QEMU was recorded against (reference transcripts
/// "irq"/"irq-nommap"), so those sessions replay against it:
///
/// - BAR0, 4 KiB MMIO, trapped: doorbell, counters, scratch, a DMA engine,
///   MSI/MSI-X triggers, and the MSI-X table.
/// - BAR1, 4 KiB MMIO backed by a memfd: mmap-able (unless built `mappable: false`),
///   also served through REGION_READ/WRITE.
/// - BAR2, 32 bytes of I/O: plain scratch bytes.
/// - INTx (pin A), MSI (1 vector), MSI-X (4 vectors), ERR, REQ.
public final class TestDevice: VFIODevice {
    /// BAR0 register offsets.
    public enum Register {
        /// Write: raise INTx (sets STATUS.IS). Read: 0.
        public static let doorbell: UInt64 = 0x00
        /// Read: doorbells rung since reset.
        public static let triggerCount: UInt64 = 0x04
        /// Bit 0 IS: INTx asserted. Write 1 to clear.
        public static let status: UInt64 = 0x08
        /// 0x10–0xff: scratch memory.
        public static let scratch: UInt64 = 0x10
        /// u64 guest address for the DMA engine.
        public static let dmaAddress: UInt64 = 0x100
        /// u32 byte count (≤ 1 KiB).
        public static let dmaLength: UInt64 = 0x108
        /// Write `DMACommand.fromGuest` or `.toGuest` to start a copy.
        public static let dmaCommand: UInt64 = 0x10c
        /// Read: 0 after a successful DMA, else the errno.
        public static let dmaStatus: UInt64 = 0x110
        /// Write n: signal MSI vector n.
        public static let msiTrigger: UInt64 = 0x120
        /// Write n: signal MSI-X vector n.
        public static let msixTrigger: UInt64 = 0x124
        /// 0x800–0xbff: DMA buffer.
        public static let dmaBuffer: UInt64 = 0x800
        /// 0xc00: MSI-X table (4 × 16 bytes); 0xe00: PBA.
        public static let msixTable: UInt64 = 0xc00
        public static let msixPBA: UInt64 = 0xe00
    }

    /// What the DMA command register takes.
    public enum DMACommand {
        /// Copy guest memory into the DMA buffer.
        public static let fromGuest: UInt32 = 1
        /// Copy the DMA buffer to guest memory.
        public static let toGuest: UInt32 = 2
    }

    public static let vendorID: UInt16 = 0x1af4
    public static let deviceID: UInt16 = 0x10f0
    static let stateMagic = "UTST"
    /// 2: the state opens with StateWriter's magic and version; 1 (a bare version byte) is still read.
    public static let stateVersion = 2
    public static let readableStateVersions = 1...stateVersion
    public var readableStateVersions: ClosedRange<Int> { Self.readableStateVersions }

    @exclusivity(unchecked) public var config = ConfigSpace()
    @exclusivity(unchecked) private var bar0 = [UInt8](repeating: 0, count: 4096)
    @exclusivity(unchecked) private var bar2 = [UInt8](repeating: 0, count: 32)
    private let bar1Memory: SharedMemory
    private var bar1: UnsafeMutableRawPointer { bar1Memory.base }
    private var initialConfig: ConfigSpace
    public let regions: [Region]
    public let irqs: [IRQ] = [.intx, IRQ(count: 1, noResize: true), IRQ(count: 4, noResize: true), IRQ(count: 1), IRQ(count: 1)]
    public let supportsReset = true
    /// Set by the server when a client attaches; STATUS.IS is announced to it.
    public weak var interrupts: InterruptSink? {
        didSet { interrupts?.setINTxLevel(u32(Register.status) & 1 != 0) }
    }
    public weak var dma: DMAAccess?
    public var migrationIdentity: MigrationIdentity? { Self.migrationIdentity(mappable: mappable) }

    /// What a test device created `mappable` or not puts in its migration
    /// streams: the one place the catalog and a resume both read it from.
    public static func migrationIdentity(mappable: Bool) -> MigrationIdentity {
        MigrationIdentity(model: "umdev.test", version: stateVersion, type: mappable ? "test" : "test-nommap",
                          parameters: ["bar1": mappable ? "mmap" : "trapped"])
    }
    private let mappable: Bool

    /// `mappable: false` traps BAR1 too (the transcripts' "irq-nommap" server).
    public init(mappable: Bool = true) throws(DeviceError) {
        self.mappable = mappable
        bar1Memory = try SharedMemory(name: "umdev-test-bar1", size: 4096)
        config.setIdentity(vendor: Self.vendorID, device: Self.deviceID, subsystemVendor: Self.vendorID,
                           subsystem: 0x0001, classCode: 0xff0000, revision: 1)
        config.setBAR(0, BAR(.memory32, size: 4096))
        config.setBAR(1, BAR(.memory32, size: 4096))
        config.setBAR(2, BAR(.io, size: 32))
        config.setInterruptPin(1)
        config.addPowerManagement()
        config.addMSI(vectors: 1)
        config.addMSIX(tableSize: 4, tableBAR: 0, tableOffset: UInt32(Register.msixTable), pbaBAR: 0, pbaOffset: UInt32(Register.msixPBA))
        config.addVendorSpecific(Array("umdev".utf8))
        initialConfig = config
        var r = [Region](repeating: .absent, count: 9)
        r[0] = Region(size: 4096)
        r[1] = Region(size: 4096, mapping: mappable ? Region.Mapping(fd: bar1Memory.fd) : nil)
        r[2] = Region(size: 32)
        r[7] = Region(size: 256)
        regions = r
    }

    public func read(region: Int, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: buffer.count) else { return EINVAL }
        let o = Int(offset)
        switch region {
        case RegionIndex.bar0:
            bar0.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + o, byteCount: buffer.count) }
        case RegionIndex.bar1:
            buffer.baseAddress!.copyMemory(from: bar1 + o, byteCount: buffer.count)
        case RegionIndex.bar2:
            bar2.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + o, byteCount: buffer.count) }
        case RegionIndex.config:
            config.read(offset: o, into: buffer)
        default:
            return EINVAL
        }
        return 0
    }

    /// Every register and memory of the test device reads without side effects.
    public func readChangesState(region: Int, offset: UInt64, count: Int) -> Bool { false }

    public func write(region: Int, offset: UInt64, data: UnsafeRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: data.count) else { return EINVAL }
        let o = Int(offset)
        switch region {
        case RegionIndex.bar0:
            return writeBAR0(offset: offset, data: data)
        case RegionIndex.bar1:
            (bar1 + o).copyMemory(from: data.baseAddress!, byteCount: data.count)
        case RegionIndex.bar2:
            for i in 0..<data.count { bar2[o + i] = data[i] }
        case RegionIndex.config:
            config.write(offset: o, data: data)
        default:
            return EINVAL
        }
        return 0
    }

    private func u32(_ o: UInt64) -> UInt32 {
        bar0.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: Int(o), as: UInt32.self) }
    }
    private func setU32(_ o: UInt64, _ v: UInt32) {
        bar0.withUnsafeMutableBytes { $0.storeBytes(of: v, toByteOffset: Int(o), as: UInt32.self) }
    }

    private func writeBAR0(offset: UInt64, data: UnsafeRawBufferPointer) -> Int32 {
        var value: UInt32 = 0
        for i in 0..<min(4, data.count) { value |= UInt32(data[i]) << (8 * UInt32(i)) }
        switch offset {
        case Register.doorbell:
            setU32(Register.triggerCount, u32(Register.triggerCount) &+ 1)
            setU32(Register.status, u32(Register.status) | 1)
            interrupts?.setINTxLevel(true)
        case Register.triggerCount:
            break // read-only
        case Register.status:
            setU32(Register.status, u32(Register.status) & ~value)
            interrupts?.setINTxLevel(u32(Register.status) & 1 != 0)
        case Register.dmaCommand:
            setU32(Register.dmaStatus, UInt32(runDMA(command: value)))
        case Register.msiTrigger:
            interrupts?.trigger(.msi, vector: Int(value))
        case Register.msixTrigger:
            interrupts?.trigger(.msix, vector: Int(value))
        default:
            let o = Int(offset)
            for i in 0..<data.count { bar0[o + i] = data[i] }
        }
        return 0
    }

    private func runDMA(command: UInt32) -> Int32 {
        let address = UInt64(u32(Register.dmaAddress)) | UInt64(u32(Register.dmaAddress + 4)) << 32
        let length = min(Int(u32(Register.dmaLength)), 1024)
        guard let dma else { return ENODEV }
        let at = Int(Register.dmaBuffer)
        var staging = [UInt8](repeating: 0, count: length)
        do {
            switch command {
            case DMACommand.fromGuest:
                try staging.withUnsafeMutableBytes { try dma.read(iova: address, into: $0) }
                bar0.replaceSubrange(at..<(at + length), with: staging)
            case DMACommand.toGuest:
                staging = Array(bar0[at..<(at + length)])
                try staging.withUnsafeBytes { try dma.write(iova: address, from: $0) }
            default:
                return EINVAL
            }
        } catch {
            return (error as? DeviceError)?.errno ?? EIO
        }
        return 0
    }

    public func reset() {
        bar0 = [UInt8](repeating: 0, count: 4096)
        bar2 = [UInt8](repeating: 0, count: 32)
        bar1Memory.clear()
        config = initialConfig
        interrupts?.setINTxLevel(false)
    }

    /// Versioned state (StateWriter): "UTST", u16 version, BAR0, BAR2,
    /// BAR1, 256 config bytes. Version 1 (umdev before every model used
    /// StateWriter) was u8 1 and the same four blocks; it is still read.
    public func saveState() -> [UInt8] {
        var w = StateWriter(magic: Self.stateMagic, version: Self.stateVersion)
        w.raw(bar0)
        w.raw(bar2)
        w.raw(UnsafeRawBufferPointer(start: bar1, count: 4096))
        w.raw(config.bytes)
        return w.bytes
    }

    public func restoreState(_ bytes: [UInt8], version: Int) throws(DeviceError) {
        var r: StateReader
        if version == 1 {
            // Version 1: no magic, a one-byte version; the blocks follow as in
            // version 2, so it is read as those blocks under today's opening.
            guard bytes.first == 1 else { throw DeviceError(EINVAL, "not a version-1 test-device state") }
            var rewrapped = StateWriter(magic: Self.stateMagic, version: 1)
            rewrapped.raw(bytes.dropFirst())
            r = try StateReader(rewrapped.bytes, magic: Self.stateMagic, what: "test-device", version: 1, readable: Self.readableStateVersions)
        } else {
            r = try StateReader(bytes, magic: Self.stateMagic, what: "test-device", version: version, readable: Self.readableStateVersions)
        }
        let newBAR0 = try r.raw(bar0.count), newBAR2 = try r.raw(bar2.count), newBAR1 = try r.raw(4096), cfg = try r.raw(initialConfig.size)
        try r.finish()
        bar0 = newBAR0
        bar2 = newBAR2
        // Memory handed over on a live upgrade holds the client's pages as they are now.
        if !bar1Memory.takeKeepContents() {
            newBAR1.withUnsafeBytes { bar1.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
        }
        config = initialConfig
        config.setBytes(0, cfg)
    }
}
