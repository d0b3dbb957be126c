/// A 128-byte EDID 1.4 base block (VESA E-EDID, release A rev. 2) for a
/// virtual monitor: the preferred mode as the first detailed timing, the
/// smaller common modes as established and standard timings, a range-limits
/// descriptor and a name. Timings follow VESA CVT reduced blanking at 60 Hz,
/// which every current driver accepts for a digital panel.
public enum EDID {
    /// The 8-byte header every EDID starts with.
    public static let header: [UInt8] = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]
    public static let blockSize = 128

    /// A mode a monitor lists, with its aspect ratio as EDID encodes it.
    public struct Mode: Sendable, Equatable {
        public var width: Int
        public var height: Int
        public init(_ width: Int, _ height: Int) { self.width = width; self.height = height }
    }

    /// Modes the established-timings bitmap can name (60 Hz ones): byte, bit.
    static let established: [(Mode, byte: Int, bit: Int)] = [
        (Mode(640, 480), 35, 5), (Mode(800, 600), 35, 0), (Mode(1024, 768), 36, 3),
    ]
    /// Larger common modes offered as standard timings, largest first.
    static let standardCandidates: [Mode] = [
        Mode(1920, 1440), Mode(1920, 1200), Mode(1920, 1080), Mode(1680, 1050),
        Mode(1600, 1200), Mode(1440, 900), Mode(1280, 1024), Mode(1280, 800), Mode(1280, 720),
    ]

    /// Builds the block for a monitor whose native mode is `preferred` and
    /// that accepts nothing larger than `limit` (nil: no limit beyond the
    /// standard candidates). `name` goes in the monitor-name descriptor
    /// (13 characters at most are kept).
    public static func generate(preferred: Mode, limit: Mode? = nil, name: String = "umdev", serial: UInt32 = 0) -> [UInt8] {
        var e = [UInt8](repeating: 0, count: blockSize)
        e.replaceSubrange(0..<8, with: header)
        // Manufacturer "UMD" (three 5-bit letters, big-endian), product 0x1111.
        let letters = Array("UMD".utf8).map { UInt16($0 - 0x40) }
        let vendor = letters[0] << 10 | letters[1] << 5 | letters[2]
        e[8] = UInt8(vendor >> 8); e[9] = UInt8(vendor & 0xff)
        e[10] = 0x11; e[11] = 0x11
        for i in 0..<4 { e[12 + i] = UInt8(truncatingIfNeeded: serial >> (8 * UInt32(i))) }
        e[16] = 1; e[17] = UInt8(2024 - 1990)          // week 1 of 2024
        e[18] = 1; e[19] = 4                            // EDID 1.4
        e[20] = 0xa0                                    // digital, 8 bits per colour
        let mm = physicalSize(preferred)
        e[21] = UInt8(min(255, (mm.width + 5) / 10)); e[22] = UInt8(min(255, (mm.height + 5) / 10))
        e[23] = 120                                     // gamma 2.2
        e[24] = 0x06                                    // sRGB default; preferred timing is native
        writeChromaticity(&e)

        let fits = { (m: Mode) in limit.map { m.width <= $0.width && m.height <= $0.height } ?? true }
        var listed = [preferred]
        for (mode, byte, bit) in established where fits(mode) {
            e[byte] |= 1 << bit
            listed.append(mode)
        }
        var slot = 0
        for mode in standardCandidates where fits(mode) && mode != preferred && slot < 8 {
            guard let code = standardTiming(mode) else { continue }
            e[38 + 2 * slot] = code.0; e[39 + 2 * slot] = code.1
            listed.append(mode)
            slot += 1
        }
        for s in slot..<8 { e[38 + 2 * s] = 0x01; e[39 + 2 * s] = 0x01 }

        e.replaceSubrange(54..<72, with: Timing.cvtReducedBlanking(preferred).detailedDescriptor(imageSize: mm))
        e.replaceSubrange(72..<90, with: rangeLimits(listed.map(Timing.cvtReducedBlanking)))
        e.replaceSubrange(90..<108, with: textDescriptor(0xfc, name))
        e.replaceSubrange(108..<126, with: [0, 0, 0, 0x10] + [UInt8](repeating: 0, count: 14)) // dummy
        e[126] = 0                                      // no extension blocks
        e[127] = checksum(e)
        return e
    }

    /// The byte that makes a block's sum 0 mod 256.
    static func checksum(_ block: [UInt8]) -> UInt8 {
        let sum = block[0..<127].reduce(0) { ($0 + Int($1)) & 0xff }
        return UInt8((256 - sum) & 0xff)
    }

    /// Whether `blob` starts with a well-formed base block: header, version 1,
    /// checksum, and room for the extension blocks it announces.
    public static func isValid(_ blob: some Collection<UInt8>) -> Bool {
        let b = Array(blob)
        guard b.count >= blockSize, b.count % blockSize == 0, Array(b[0..<8]) == header, b[18] == 1 else { return false }
        guard b.count >= blockSize * (1 + Int(b[126])) else { return false }
        // Every block, base and extensions, sums to 0 mod 256.
        return stride(from: 0, to: b.count, by: blockSize).allSatisfy { start in
            b[start..<(start + blockSize)].reduce(0, { ($0 + Int($1)) & 0xff }) == 0
        }
    }

    /// The detailed timings' active sizes in a block (what a driver lists first).
    public static func detailedModes(_ block: [UInt8]) -> [Mode] {
        guard block.count >= blockSize else { return [] }
        var out: [Mode] = []
        for start in stride(from: 54, to: 126, by: 18) where block[start] != 0 || block[start + 1] != 0 {
            let w = Int(block[start + 2]) | Int(block[start + 4] >> 4) << 8
            let h = Int(block[start + 5]) | Int(block[start + 7] >> 4) << 8
            out.append(Mode(w, h))
        }
        return out
    }

    /// The standard timings' modes in a block.
    public static func standardModes(_ block: [UInt8]) -> [Mode] {
        guard block.count >= blockSize else { return [] }
        var out: [Mode] = []
        for s in 0..<8 {
            let a = block[38 + 2 * s], b = block[39 + 2 * s]
            if a == 0x01 && b == 0x01 || a == 0 { continue }
            let w = (Int(a) + 31) * 8
            let h: Int
            switch b >> 6 {
            case 0: h = w * 10 / 16
            case 1: h = w * 3 / 4
            case 2: h = w * 4 / 5
            default: h = w * 9 / 16
            }
            out.append(Mode(w, h))
        }
        return out
    }

    /// The established-timing modes a block sets.
    public static func establishedModes(_ block: [UInt8]) -> [Mode] {
        established.filter { block[$0.byte] & (1 << $0.bit) != 0 }.map(\.0)
    }

    // MARK: Fields

    /// A standard-timing pair for 60 Hz, if the mode has one of the four
    /// aspect ratios EDID 1.4 can encode.
    static func standardTiming(_ m: Mode) -> (UInt8, UInt8)? {
        guard m.width % 8 == 0, (256...2288).contains(m.width) else { return nil }
        let aspect: UInt8
        switch m.width * 100 / m.height {
        case 160: aspect = 0          // 16:10
        case 133: aspect = 1          // 4:3
        case 125: aspect = 2          // 5:4
        case 177: aspect = 3          // 16:9
        default: return nil
        }
        return (UInt8(m.width / 8 - 31), aspect << 6 | 0)
    }

    /// The picture's size in millimetres at 96 dots per inch.
    static func physicalSize(_ m: Mode) -> (width: Int, height: Int) {
        (m.width * 254 / 960, m.height * 254 / 960)
    }

    /// sRGB primaries and D65 white, as 10-bit fractions.
    static func writeChromaticity(_ e: inout [UInt8]) {
        let xy: [Double] = [0.640, 0.330, 0.300, 0.600, 0.150, 0.060, 0.3127, 0.3290]
        let v = xy.map { Int(($0 * 1024).rounded()) }
        e[25] = UInt8((v[0] & 3) << 6 | (v[1] & 3) << 4 | (v[2] & 3) << 2 | (v[3] & 3))
        e[26] = UInt8((v[4] & 3) << 6 | (v[5] & 3) << 4 | (v[6] & 3) << 2 | (v[7] & 3))
        for i in 0..<8 { e[27 + i] = UInt8(v[i] >> 2) }
    }

    /// Display range limits (tag 0xFD): 50–75 Hz vertical, horizontal and
    /// clock ranges wide enough for every mode listed.
    static func rangeLimits(_ timings: [Timing]) -> [UInt8] {
        let maxHKHz = timings.map { ($0.pixelClockKHz + $0.horizontalTotal - 1) / $0.horizontalTotal + 1 }.max() ?? 31
        let maxClock10MHz = max(3, ((timings.map(\.pixelClockKHz).max() ?? 0) + 9_999) / 10_000)
        return [0, 0, 0, 0xfd, 0, 50, 75, 30, UInt8(min(255, maxHKHz)), UInt8(min(255, maxClock10MHz)),
                0x01, 0x0a, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20]
    }

    /// A text descriptor (0xFC name, 0xFF serial): up to 13 characters,
    /// ended by a newline and padded with spaces.
    static func textDescriptor(_ tag: UInt8, _ text: String) -> [UInt8] {
        var chars = Array(text.utf8.filter { (0x20..<0x7f).contains($0) }.prefix(13))
        if chars.count < 13 { chars.append(0x0a) }
        while chars.count < 13 { chars.append(0x20) }
        return [0, 0, 0, tag, 0] + chars
    }

    /// One mode's timing.
    public struct Timing: Sendable, Equatable {
        public var pixelClockKHz: Int
        public var width: Int, horizontalBlank: Int, horizontalFront: Int, horizontalSync: Int
        public var height: Int, verticalBlank: Int, verticalFront: Int, verticalSync: Int
        public var horizontalTotal: Int { width + horizontalBlank }

        /// CVT reduced blanking (v1) at 60 Hz: 160-pixel horizontal blank,
        /// at least 460 µs of vertical blank, 0.25 MHz clock steps.
        public static func cvtReducedBlanking(_ m: Mode) -> Timing {
            let refresh = 60.0, minVBlankMicroseconds = 460.0
            let hBlank = 160, hSync = 32, hFront = 48, vFront = 3, minVBack = 6
            let vSync: Int
            switch m.width * 100 / max(1, m.height) {
            case 133: vSync = 4
            case 177: vSync = 5
            case 160: vSync = 6
            case 125: vSync = 7
            default: vSync = 10
            }
            let hPeriod = (1_000_000.0 / refresh - minVBlankMicroseconds) / Double(m.height)
            let vbiLines = max(Int(minVBlankMicroseconds / hPeriod) + 1, vFront + vSync + minVBack)
            let totalLines = m.height + vbiLines
            let clockMHz = 0.25 * (refresh * Double(totalLines * (m.width + hBlank)) / 1_000_000 / 0.25).rounded(.down)
            return Timing(pixelClockKHz: Int((clockMHz * 1000).rounded()),
                          width: m.width, horizontalBlank: hBlank, horizontalFront: hFront, horizontalSync: hSync,
                          height: m.height, verticalBlank: vbiLines, verticalFront: vFront, verticalSync: vSync)
        }

        /// The 18-byte detailed timing descriptor; digital separate sync,
        /// +hsync −vsync as reduced blanking requires.
        public func detailedDescriptor(imageSize mm: (width: Int, height: Int)) -> [UInt8] {
            func low(_ v: Int) -> UInt8 { UInt8(v & 0xff) }
            func high(_ a: Int, _ b: Int) -> UInt8 { UInt8((a >> 8 & 0x0f) << 4 | (b >> 8 & 0x0f)) }
            let clock = pixelClockKHz / 10
            var d: [UInt8] = [low(clock), low(clock >> 8)]
            d += [low(width), low(horizontalBlank), high(width, horizontalBlank)]
            d += [low(height), low(verticalBlank), high(height, verticalBlank)]
            d += [low(horizontalFront), low(horizontalSync), UInt8((verticalFront & 0x0f) << 4 | (verticalSync & 0x0f))]
            let upper = (horizontalFront >> 8 & 3) << 6 | (horizontalSync >> 8 & 3) << 4
            d.append(UInt8(upper | (verticalFront >> 4 & 3) << 2 | (verticalSync >> 4 & 3)))
            d += [low(mm.width), low(mm.height), high(mm.width, mm.height)]
            d += [0, 0, 0x1a] // no border; digital separate sync, +hsync -vsync
            return d
        }
    }
}
