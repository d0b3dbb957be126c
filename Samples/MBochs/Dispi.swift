import PCI

/// The Bochs VBE "DISPI" registers as QEMU's bochs-display keeps them
/// (hw/display/bochs-display.c, include/hw/display/bochs-vbe.h): ten stored
/// 16-bit registers plus two that only read back fixed facts, and the
/// framebuffer byte order from QEMU's extended registers.
///
/// Values are stored as written; limits apply when the scanout is derived,
/// as on QEMU's device.
public struct DispiRegisters: Sendable, Equatable {
    /// Register indices; register i sits at BAR2 0x500 + 2·i.
    public enum Index {
        public static let id = 0
        public static let xres = 1
        public static let yres = 2
        public static let bpp = 3
        public static let enable = 4
        public static let bank = 5
        public static let virtWidth = 6
        public static let virtHeight = 7
        public static let xOffset = 8
        public static let yOffset = 9
        /// Read-only: VRAM size in 64 KiB units.
        public static let videoMemory64K = 10
        /// Registers a guest can read (0x500–0x515).
        public static let count = 11
        /// Registers that hold what the guest wrote (QEMU's vbe_regs).
        public static let storedCount = 10
    }

    /// What ID always reads (VBE_DISPI_ID5); drivers accept 0xB0C0–0xB0CF.
    public static let id5: UInt16 = 0xb0c5

    /// ENABLE bits.
    public enum Enable {
        public static let enabled: UInt16 = 0x01
        public static let getCaps: UInt16 = 0x02
        public static let dac8Bit: UInt16 = 0x20
        public static let linearFramebuffer: UInt16 = 0x40
        public static let noClearMemory: UInt16 = 0x80
    }

    /// QEMU's extended registers (BAR2 0x600, 32-bit): their size, and the
    /// framebuffer byte order.
    public enum Extended {
        public static let size: UInt32 = 8
        public static let littleEndian: UInt32 = 0x1e1e_1e1e
        public static let bigEndian: UInt32 = 0xbebe_bebe
    }

    /// Smallest visible size a mode may have (bochs-display and mbochs).
    public static let minimumSize: UInt32 = 64

    private var stored = [UInt16](repeating: 0, count: Index.storedCount)
    /// The VRAM size this register file reports and checks modes against.
    public let vramSize: UInt64
    /// Set by writing 0xbebebebe to the byte-order register.
    public var bigEndianFramebuffer = false

    public init(vramSize: UInt64) { self.vramSize = vramSize }

    /// Registers as saved (`storedValues`), for a migration's restore.
    public init(vramSize: UInt64, stored: [UInt16], bigEndianFramebuffer: Bool) {
        precondition(stored.count == Index.storedCount)
        self.vramSize = vramSize
        self.stored = stored
        self.bigEndianFramebuffer = bigEndianFramebuffer
    }

    /// A register as the guest reads it.
    public func read(_ index: Int) -> UInt16 {
        switch index {
        case Index.id: Self.id5
        case Index.videoMemory64K: UInt16(truncatingIfNeeded: vramSize / 0x10000)
        case 0..<Index.storedCount: stored[index]
        default: 0xffff
        }
    }

    /// A guest write; ID and VIDEO_MEMORY_64K keep reading their fixed values.
    /// Returns whether the scanout may have changed (a register it depends
    /// on took a new value), so callers skip re-deriving it otherwise.
    @discardableResult
    public mutating func write(_ index: Int, _ value: UInt16) -> Bool {
        guard (0..<Index.storedCount).contains(index), stored[index] != value else { return false }
        stored[index] = value
        switch index {
        case Index.id, Index.bank, Index.virtHeight: return false
        default: return true
        }
    }

    /// The byte-order register as the guest reads it.
    public var byteOrder: UInt32 { bigEndianFramebuffer ? Extended.bigEndian : Extended.littleEndian }

    /// A write to the byte-order register: only the two magic values count.
    /// Returns whether the byte order changed.
    @discardableResult
    public mutating func writeByteOrder(_ value: UInt32) -> Bool {
        let before = bigEndianFramebuffer
        if value == Extended.bigEndian { bigEndianFramebuffer = true }
        if value == Extended.littleEndian { bigEndianFramebuffer = false }
        return bigEndianFramebuffer != before
    }

    /// What the registers put on screen, as bochs-display and the sample
    /// derive it: nothing unless ENABLE has its enabled bit and BPP is 16 or
    /// 32; stride from max(VIRT_WIDTH, XRES); offset from X/Y_OFFSET; at
    /// least 64×64, and the whole picture inside VRAM.
    public func scanout(region: Int) -> DisplayPlane? {
        guard stored[Index.enable] & Enable.enabled != 0 else { return nil }
        let fourcc: UInt32, bytesPerPixel: UInt64
        switch stored[Index.bpp] {
        case 16: fourcc = DRMFormat.rgb565; bytesPerPixel = 2
        case 32: fourcc = bigEndianFramebuffer ? DRMFormat.bgrx8888 : DRMFormat.xrgb8888; bytesPerPixel = 4
        default: return nil
        }
        let width = UInt64(stored[Index.xres]), height = UInt64(stored[Index.yres])
        let stride = max(UInt64(stored[Index.virtWidth]), width) * bytesPerPixel
        let size = stride * height
        let offset = UInt64(stored[Index.xOffset]) * bytesPerPixel + UInt64(stored[Index.yOffset]) * stride
        guard width >= Self.minimumSize, height >= Self.minimumSize, offset + size <= vramSize else { return nil }
        return DisplayPlane(kind: .dmabuf, fourcc: fourcc, width: UInt32(width), height: UInt32(height),
                            stride: UInt32(stride), size: size, region: region, offset: offset, id: 0)
    }

    /// The stored registers, for saving and comparing.
    public var storedValues: [UInt16] { stored }
}

// MARK: What a driver writes

extension DispiRegisters {
    /// One 16-bit DISPI register write, at its offset in BAR2.
    public struct Write: Equatable, Sendable {
        public let offset: UInt64
        public let value: UInt16
        public init(_ index: Int, _ value: UInt16) {
            offset = UInt64(MBochs.MMIO.dispi.lowerBound + 2 * index)
            self.value = value
        }
    }

    /// A 32-bpp width×height mode as Linux's bochs-drm sets it
    /// (bochs_hw_setmode: disable, geometry, the virtual height that all of
    /// `vramSize` gives at the stride, enable with the linear framebuffer).
    /// What every scripted guest in umdev writes: play-guest, the
    /// benchmarks, the tests; `pan` follows it to move the origin.
    public static func modeSet(width: Int, height: Int, vramSize: UInt64) -> [Write] {
        let stride = max(1, width * 4)
        func u16(_ v: Int) -> UInt16 { UInt16(truncatingIfNeeded: v) }
        return [
            Write(Index.enable, 0),
            Write(Index.bpp, 32),
            Write(Index.xres, u16(width)),
            Write(Index.yres, u16(height)),
            Write(Index.bank, 0),
            Write(Index.virtWidth, u16(width)),
            Write(Index.virtHeight, u16(Int(min(vramSize / UInt64(stride), 0xffff)))),
            Write(Index.xOffset, 0),
            Write(Index.yOffset, 0),
            Write(Index.enable, Enable.enabled | Enable.linearFramebuffer),
        ]
    }

    /// Panning: the framebuffer's origin in the virtual screen (bochs_hw_setbase).
    public static func pan(x: Int, y: Int) -> [Write] {
        [Write(Index.xOffset, UInt16(truncatingIfNeeded: x)), Write(Index.yOffset, UInt16(truncatingIfNeeded: y))]
    }

    /// Turns the display off (ENABLE = 0).
    public static let disable = Write(Index.enable, 0)
}
