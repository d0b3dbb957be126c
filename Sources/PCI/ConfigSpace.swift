/// A type-0 PCI configuration space: the bytes the guest reads, which bits
/// it may change, and which bits clear when written with 1.
///
/// Every write goes through one rule, byte by byte:
/// `new = (old & ~writable) | (value & writable)`, then `new &= ~(value & w1c)`.
/// BAR sizing falls out of it: a BAR's writable bits are its address bits,
/// so writing all-ones reads back the size mask with the type bits intact.
public struct ConfigSpace: Sendable {
    /// Standard header offsets (PCI Local Bus 3.0, §6.1).
    public enum Offset {
        public static let vendorID = 0x00
        public static let deviceID = 0x02
        public static let command = 0x04
        public static let status = 0x06
        public static let revision = 0x08
        public static let progIF = 0x09
        public static let subclass = 0x0a
        public static let classCode = 0x0b
        public static let cacheLineSize = 0x0c
        public static let latencyTimer = 0x0d
        public static let headerType = 0x0e
        public static let bar0 = 0x10
        public static let subsystemVendorID = 0x2c
        public static let subsystemID = 0x2e
        public static let romAddress = 0x30
        public static let capabilitiesPointer = 0x34
        public static let interruptLine = 0x3c
        public static let interruptPin = 0x3d
    }

    /// Command register bits.
    public enum CommandBit {
        public static let io: UInt16 = 1 << 0
        public static let memory: UInt16 = 1 << 1
        public static let busMaster: UInt16 = 1 << 2
        public static let parityErrorResponse: UInt16 = 1 << 6
        public static let serr: UInt16 = 1 << 8
        public static let interruptDisable: UInt16 = 1 << 10
        /// The bits a guest may change.
        public static let writable: UInt16 = io | memory | busMaster | parityErrorResponse | serr | interruptDisable
    }

    /// Status register bits.
    public enum StatusBit {
        public static let interruptStatus: UInt16 = 1 << 3
        public static let capabilitiesList: UInt16 = 1 << 4
        public static let devselMedium: UInt16 = 1 << 9
        /// Error bits cleared by writing 1 (bits 8, 11–15).
        public static let writeOneToClear: UInt16 = 0xf900
    }

    /// Capability ids.
    public enum CapabilityID {
        public static let powerManagement: UInt8 = 0x01
        public static let msi: UInt8 = 0x05
        public static let vendorSpecific: UInt8 = 0x09
        public static let pciExpress: UInt8 = 0x10
        public static let msix: UInt8 = 0x11
    }

    public private(set) var bytes: [UInt8]
    private var writable: [UInt8]
    private var writeOneToClear: [UInt8]
    /// Offset of the last capability added (its `next` is patched by the next add).
    private var lastCapability = 0
    /// First free byte for capabilities.
    private var capabilityCursor = 0x40

    /// A zeroed space of `size` bytes (256 for conventional PCI).
    public init(size: Int = 256) {
        precondition(size == 256 || size == 4096)
        bytes = [UInt8](repeating: 0, count: size)
        writable = [UInt8](repeating: 0, count: size)
        writeOneToClear = [UInt8](repeating: 0, count: size)
    }

    public var size: Int { bytes.count }

    // MARK: Building the header

    /// Writes identity fields and makes the standard writable registers writable.
    public mutating func setIdentity(vendor: UInt16, device: UInt16, subsystemVendor: UInt16, subsystem: UInt16,
                                     classCode: UInt32, revision: UInt8) {
        set16(Offset.vendorID, vendor)
        set16(Offset.deviceID, device)
        bytes[Offset.revision] = revision
        bytes[Offset.progIF] = UInt8(classCode & 0xff)
        bytes[Offset.subclass] = UInt8(classCode >> 8 & 0xff)
        bytes[Offset.classCode] = UInt8(classCode >> 16 & 0xff)
        set16(Offset.subsystemVendorID, subsystemVendor)
        set16(Offset.subsystemID, subsystem)
        setMask16(Offset.command, writable: CommandBit.writable)
        setMask16(Offset.status, writable: 0, writeOneToClear: StatusBit.writeOneToClear)
        writable[Offset.cacheLineSize] = 0xff
        writable[Offset.latencyTimer] = 0xff
        writable[Offset.interruptLine] = 0xff
    }

    /// Declares BAR `index` (0–5). I/O BARs are ≥ 4 bytes, memory BARs ≥ 16,
    /// both powers of two; a 64-bit BAR also takes index + 1.
    public mutating func setBAR(_ index: Int, _ bar: BAR) {
        precondition((0..<6).contains(index))
        precondition(bar.size.nonzeroBitCount == 1, "BAR size must be a power of two")
        let off = Offset.bar0 + 4 * index
        let addressMask = ~(bar.size - 1)
        switch bar.kind {
        case .io:
            precondition(bar.size >= 4)
            set32(off, 0x1)
            setMask32(off, writable: UInt32(truncatingIfNeeded: addressMask) & ~0x3)
        case .memory32:
            precondition(bar.size >= 16 && bar.size <= 1 << 31)
            set32(off, bar.prefetchable ? 0x8 : 0)
            setMask32(off, writable: UInt32(truncatingIfNeeded: addressMask) & ~0xf)
        case .memory64:
            precondition(bar.size >= 16 && index < 5)
            set32(off, 0x4 | (bar.prefetchable ? 0x8 : 0))
            setMask32(off, writable: UInt32(truncatingIfNeeded: addressMask) & ~0xf)
            setMask32(off + 4, writable: UInt32(truncatingIfNeeded: addressMask >> 32))
        }
    }

    /// Sets interrupt pin (1 = INTA#); the pin is read-only to the guest.
    public mutating func setInterruptPin(_ pin: UInt8) { bytes[Offset.interruptPin] = pin }

    /// Stores raw bytes (vendor filler) without changing masks.
    public mutating func setBytes(_ offset: Int, _ values: [UInt8]) {
        for (i, b) in values.enumerated() { bytes[offset + i] = b }
    }

    public mutating func set16(_ o: Int, _ v: UInt16) { bytes[o] = UInt8(v & 0xff); bytes[o + 1] = UInt8(v >> 8) }
    public mutating func set32(_ o: Int, _ v: UInt32) {
        for i in 0..<4 { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
    public func get16(_ o: Int) -> UInt16 { UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8 }
    public func get32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[o + $1]) << (8 * UInt32($1)) } }

    mutating func setMask16(_ o: Int, writable w: UInt16, writeOneToClear c: UInt16 = 0) {
        writable[o] = UInt8(w & 0xff); writable[o + 1] = UInt8(w >> 8)
        writeOneToClear[o] = UInt8(c & 0xff); writeOneToClear[o + 1] = UInt8(c >> 8)
    }
    mutating func setMask32(_ o: Int, writable w: UInt32) {
        for i in 0..<4 { writable[o + i] = UInt8(truncatingIfNeeded: w >> (8 * UInt32(i))) }
    }

    // MARK: Capabilities

    /// Appends a capability (id, then `body` after the 2-byte id/next header)
    /// to the list, with per-byte writable and write-1-to-clear masks for the body.
    /// Returns its offset.
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writable w: [UInt8] = [], writeOneToClear c: [UInt8] = []) -> Int {
        let off = capabilityCursor
        let length = 2 + body.count
        precondition(off + length <= 256, "capabilities overflow the header")
        bytes[off] = id
        bytes[off + 1] = 0
        for (i, b) in body.enumerated() { bytes[off + 2 + i] = b }
        for (i, m) in w.enumerated() { writable[off + 2 + i] = m }
        for (i, m) in c.enumerated() { writeOneToClear[off + 2 + i] = m }
        if lastCapability == 0 {
            bytes[Offset.capabilitiesPointer] = UInt8(off)
            bytes[Offset.status] |= UInt8(StatusBit.capabilitiesList)
        } else {
            bytes[lastCapability + 1] = UInt8(off)
        }
        lastCapability = off
        capabilityCursor = (off + length + 3) & ~3
        return off
    }

    /// MSI capability with `vectors` (power of two, 1–32), 64-bit addresses,
    /// and per-vector masking when `maskable`.
    @discardableResult
    public mutating func addMSI(vectors: Int, maskable: Bool = false) -> Int {
        precondition(vectors.nonzeroBitCount == 1 && vectors <= 32)
        let mmc = UInt16(vectors.trailingZeroBitCount) << 1
        let control: UInt16 = mmc | (1 << 7) | (maskable ? 1 << 8 : 0)
        // control(2) address(4) upper(4) data(2) reserved(2) [mask(4) pending(4)]
        var body = [UInt8](repeating: 0, count: maskable ? 22 : 14)
        body[0] = UInt8(control & 0xff); body[1] = UInt8(control >> 8)
        var w = [UInt8](repeating: 0, count: body.count)
        w[0] = 0x71 // enable + multiple message enable
        for i in 2..<6 { w[i] = 0xff }
        w[2] = 0xfc // address is dword aligned
        for i in 6..<12 { w[i] = 0xff }
        if maskable { for i in 14..<18 { w[i] = 0xff } }
        return addCapability(id: CapabilityID.msi, body: body, writable: w)
    }

    /// MSI-X capability: table and PBA in BARs at the given offsets (8-aligned).
    @discardableResult
    public mutating func addMSIX(tableSize: Int, tableBAR: Int, tableOffset: UInt32, pbaBAR: Int, pbaOffset: UInt32) -> Int {
        precondition((1...2048).contains(tableSize))
        let control = UInt16(tableSize - 1)
        let table = tableOffset | UInt32(tableBAR)
        let pba = pbaOffset | UInt32(pbaBAR)
        var body: [UInt8] = [UInt8(control & 0xff), UInt8(control >> 8)]
        for v in [table, pba] { for i in 0..<4 { body.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
        var w = [UInt8](repeating: 0, count: body.count)
        w[1] = 0xc0 // enable, function mask
        return addCapability(id: CapabilityID.msix, body: body, writable: w)
    }

    /// Power-management capability (version 3, D0/D3hot).
    @discardableResult
    public mutating func addPowerManagement() -> Int {
        // PMC(2) PMCSR(2) bridge(1) data(1)
        let body: [UInt8] = [0x03, 0x00, 0x08, 0x00, 0x00, 0x00] // v3; NoSoftReset
        var w = [UInt8](repeating: 0, count: body.count)
        w[2] = 0x03 // power state
        w[3] = 0x01 // PME enable
        var c = [UInt8](repeating: 0, count: body.count)
        c[3] = 0x80 // PME status
        return addCapability(id: CapabilityID.powerManagement, body: body, writable: w, writeOneToClear: c)
    }

    /// PCI Express capability (version 2) for an integrated endpoint.
    @discardableResult
    public mutating func addPCIExpress() -> Int {
        var body = [UInt8](repeating: 0, count: 58) // 60-byte v2 structure
        body[0] = 0x92; body[1] = 0x00 // version 2, RC integrated endpoint (type 9)
        var w = [UInt8](repeating: 0, count: body.count)
        // Device control (offset 8 in the cap, 6 in body) is guest-writable.
        w[6] = 0xff; w[7] = 0x7f
        var c = [UInt8](repeating: 0, count: body.count)
        c[8] = 0x0f // device status error bits
        return addCapability(id: CapabilityID.pciExpress, body: body, writable: w, writeOneToClear: c)
    }

    /// Vendor-specific capability carrying `payload` (length byte added).
    @discardableResult
    public mutating func addVendorSpecific(_ payload: [UInt8]) -> Int {
        addCapability(id: CapabilityID.vendorSpecific, body: [UInt8(payload.count + 3)] + payload)
    }

    // MARK: Guest access

    /// Copies `buffer.count` bytes from `offset` (caller checked the range).
    @inline(__always)
    public func read(offset: Int, into buffer: UnsafeMutableRawBufferPointer) {
        bytes.withUnsafeBytes { src in
            buffer.baseAddress!.copyMemory(from: src.baseAddress! + offset, byteCount: buffer.count)
        }
    }

    /// Applies a guest write under the writable / write-1-to-clear masks.
    public mutating func write(offset: Int, data: UnsafeRawBufferPointer) {
        for i in 0..<data.count {
            let o = offset + i
            let v = data[i]
            var b = (bytes[o] & ~writable[o]) | (v & writable[o])
            b &= ~(v & writeOneToClear[o])
            bytes[o] = b
        }
    }

    public var command: UInt16 { get16(Offset.command) }
}

/// A base address register's shape.
public struct BAR: Sendable, Equatable {
    public enum Kind: Sendable { case io, memory32, memory64 }
    public var kind: Kind
    public var size: UInt64
    public var prefetchable: Bool
    public init(_ kind: Kind, size: UInt64, prefetchable: Bool = false) {
        self.kind = kind; self.size = size; self.prefetchable = prefetchable
    }
}
