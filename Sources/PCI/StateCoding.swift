import Glibc

/// Builds a device's migration state: little-endian fields in order.
public struct StateWriter {
    public private(set) var bytes: [UInt8] = []
    public init(magic: String, version: Int) {
        bytes = Array(magic.utf8)
        u16(UInt16(version))
    }
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { bytes += [UInt8(v & 0xff), UInt8(v >> 8)] }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func raw(_ b: some Sequence<UInt8>) { bytes += b }
}

/// Reads a state `StateWriter` built; every read is bounds-checked and a
/// short or malformed state is a `DeviceError` naming the device.
public struct StateReader {
    public let bytes: [UInt8]
    public private(set) var position = 0
    let what: String

    /// Checks the magic; the version follows (read it with `u16`).
    public init(_ bytes: [UInt8], magic: String, what: String) throws(DeviceError) {
        self.bytes = bytes
        self.what = what
        let m = Array(magic.utf8)
        guard bytes.count >= m.count + 2, Array(bytes[0..<m.count]) == m else { throw DeviceError(EINVAL, "not \(what) state") }
        position = m.count
    }

    mutating func take(_ n: Int) throws(DeviceError) -> ArraySlice<UInt8> {
        guard n >= 0, bytes.count - position >= n else { throw DeviceError(EINVAL, "\(what) state truncated") }
        defer { position += n }
        return bytes[position..<(position + n)]
    }
    public mutating func u8() throws(DeviceError) -> UInt8 { try take(1).first! }
    public mutating func u16() throws(DeviceError) -> UInt16 { let b = try take(2); return UInt16(b[b.startIndex]) | UInt16(b[b.startIndex + 1]) << 8 }
    public mutating func u32() throws(DeviceError) -> UInt32 {
        let b = try take(4)
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[b.startIndex + $1]) << (8 * UInt32($1)) }
    }
    public mutating func raw(_ n: Int) throws(DeviceError) -> [UInt8] { Array(try take(n)) }
    /// Moves past `n` bytes consumed elsewhere (memory pages).
    public mutating func skip(to position: Int) { self.position = position }
    /// Throws unless every byte was read.
    public func finish() throws(DeviceError) {
        guard position == bytes.count else { throw DeviceError(EINVAL, "\(what) state has bytes left over") }
    }
}
