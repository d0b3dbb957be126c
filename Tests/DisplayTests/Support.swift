import Glibc
import PCI
import Testing

/// Register-level access to a device model, as the server would make it.
extension VFIODevice {
    func bytes(_ region: Int, _ offset: Int, _ count: Int) -> (errno: Int32, bytes: [UInt8]) {
        var out = [UInt8](repeating: 0, count: count)
        let e = out.withUnsafeMutableBytes { read(region: region, offset: UInt64(offset), into: $0) }
        return (e, out)
    }

    /// The little-endian value a read returns. A refused read fails the
    /// calling test (at the caller's line) and reads as 0; the run goes on.
    func value(_ region: Int, _ offset: Int, _ width: Int, sourceLocation: SourceLocation = #_sourceLocation) -> UInt64 {
        let r = bytes(region, offset, width)
        guard r.errno == 0 else {
            Issue.record("read of region \(region) offset \(offset) width \(width) refused with errno \(r.errno)", sourceLocation: sourceLocation)
            return 0
        }
        return r.bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    @discardableResult
    func put(_ region: Int, _ offset: Int, _ bytes: [UInt8]) -> Int32 {
        bytes.withUnsafeBytes { write(region: region, offset: UInt64(offset), data: $0) }
    }

    @discardableResult
    func put(_ region: Int, _ offset: Int, width: Int, _ value: UInt64) -> Int32 {
        put(region, offset, (0..<width).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) })
    }
}

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
