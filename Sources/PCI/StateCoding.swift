import Glibc

/// Builds a device's migration state: a four-character magic naming the
/// model's format, a u16 version, then little-endian fields in order.
/// Every model writes its state with it, so every state opens the same way
/// and `StateReader` checks that opening the same way.
public struct StateWriter {
    public private(set) var bytes: [UInt8] = []
    public init(magic: String, version: Int) {
        precondition(magic.utf8.count == 4 && (0...Int(UInt16.max)).contains(version))
        bytes = Array(magic.utf8)
        u16(UInt16(version))
    }
    /// Fields alone, for a part of a larger format (a handover's section).
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { bytes += [UInt8(v & 0xff), UInt8(v >> 8)] }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func raw(_ b: some Sequence<UInt8>) { bytes += b }
    /// A name: a u8 length and at most 255 bytes of UTF-8, cut on a
    /// character boundary (so the reader never meets half a character).
    public mutating func name(_ s: String) {
        var utf8: [UInt8] = []
        for c in s where utf8.count + c.utf8.count <= 255 { utf8 += c.utf8 }
        u8(UInt8(utf8.count)); raw(utf8)
    }
}

/// Reads a state `StateWriter` built; every read is bounds-checked and a
/// short or malformed state is a `DeviceError` naming the device.
public struct StateReader {
    public let bytes: [UInt8]
    public private(set) var position = 0
    /// The version the state carries: the one its stream's identity names,
    /// and one the model reads.
    public let version: Int
    /// What is read, as errors name it ("mtty state", "handover").
    let what: String

    /// Checks the magic and the version: the state must say it is
    /// `expected` (what the stream's identity said) and the model must read
    /// it (`readable`).
    public init(_ bytes: [UInt8], magic: String, what device: String, version expected: Int, readable: ClosedRange<Int>) throws(DeviceError) {
        let what = "\(device) state"
        let v = try Self.opening(bytes, magic: magic, what: what)
        guard readable.contains(v) else { throw DeviceError(EINVAL, "unsupported \(what) version \(v)") }
        guard v == expected else { throw DeviceError(EINVAL, "\(what) version differs from its stream's") }
        self.init(bytes, what: what, version: v, at: magic.utf8.count + 2)
    }

    /// Checks the magic and that the version the bytes carry is one
    /// `readable` holds (a format whose version is not named elsewhere,
    /// like a handover).
    public init(_ bytes: [UInt8], magic: String, what: String, readable: ClosedRange<Int>) throws(DeviceError) {
        let v = try Self.opening(bytes, magic: magic, what: what)
        guard readable.contains(v) else {
            throw DeviceError(EINVAL, "\(what) version \(v); this umdev reads \(readable.lowerBound)...\(readable.upperBound)")
        }
        self.init(bytes, what: what, version: v, at: magic.utf8.count + 2)
    }

    /// Fields alone, as `StateWriter()` wrote them (a part of a larger format).
    public init(fields bytes: [UInt8], what: String) { self.init(bytes, what: what, version: 0, at: 0) }

    private init(_ bytes: [UInt8], what: String, version: Int, at position: Int) {
        self.bytes = bytes
        self.what = what
        self.version = version
        self.position = position
    }

    /// The version after `magic`, or why the bytes are not `what`.
    private static func opening(_ bytes: [UInt8], magic: String, what: String) throws(DeviceError) -> Int {
        let m = Array(magic.utf8)
        guard bytes.count >= m.count + 2, Array(bytes[0..<m.count]) == m else { throw DeviceError(EINVAL, "not \(what)") }
        return Int(bytes[m.count]) | Int(bytes[m.count + 1]) << 8
    }

    /// Bytes not read yet.
    public var remaining: Int { bytes.count - position }

    mutating func take(_ n: Int) throws(DeviceError) -> ArraySlice<UInt8> {
        guard n >= 0, bytes.count - position >= n else { throw DeviceError(EINVAL, "\(what) truncated") }
        defer { position += n }
        return bytes[position..<(position + n)]
    }
    public mutating func u8() throws(DeviceError) -> UInt8 { try take(1).first! }
    public mutating func u16() throws(DeviceError) -> UInt16 { let b = try take(2); return UInt16(b[b.startIndex]) | UInt16(b[b.startIndex + 1]) << 8 }
    public mutating func u32() throws(DeviceError) -> UInt32 {
        let b = try take(4)
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[b.startIndex + $1]) << (8 * UInt32($1)) }
    }
    public mutating func u64() throws(DeviceError) -> UInt64 {
        let b = try take(8)
        return (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[b.startIndex + $1]) << (8 * UInt64($1)) }
    }
    public mutating func raw(_ n: Int) throws(DeviceError) -> [UInt8] { Array(try take(n)) }
    /// A name `StateWriter.name` wrote; refused unless it is UTF-8.
    public mutating func name() throws(DeviceError) -> String {
        let n = Int(try u8())
        guard let s = String(validating: try take(n), as: UTF8.self) else { throw DeviceError(EINVAL, "\(what) has a name that is not UTF-8") }
        return s
    }
    /// Moves past `n` bytes consumed elsewhere (memory pages).
    public mutating func skip(to position: Int) { self.position = position }
    /// Throws unless every byte was read.
    public func finish() throws(DeviceError) {
        guard position == bytes.count else { throw DeviceError(EINVAL, "\(what) has bytes left over") }
    }
}
