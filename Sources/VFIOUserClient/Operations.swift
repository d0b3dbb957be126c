import Descriptors
import Glibc
import VFIOUser

/// DEVICE_GET_INFO's answer.
public struct DeviceInfo: Equatable, Sendable {
    public var flags: UInt32
    public var regionCount: UInt32
    public var irqCount: UInt32
    public var supportsReset: Bool { flags & VFIO.deviceFlagsReset != 0 }
    public var isPCI: Bool { flags & VFIO.deviceFlagsPCI != 0 }
}

/// DEVICE_GET_REGION_INFO's answer, capabilities parsed.
public struct RegionInfo: Sendable {
    public var argsz: UInt32
    public var flags: UInt32
    public var index: UInt32
    public var capabilityOffset: UInt32
    public var size: UInt64
    public var offset: UInt64
    /// SPARSE_MMAP areas (offset, size), relative to the region.
    public var sparseAreas: [(offset: UInt64, size: UInt64)] = []
    /// TYPE capability.
    public var type: (type: UInt32, subtype: UInt32)?
    /// The region's descriptor when MMAP was granted; closed when the last
    /// copy of this info (or of the reference) goes.
    public var descriptor: SharedDescriptor?
    /// `descriptor`'s number, or -1: valid while `descriptor` is held.
    public var fd: Int32 { descriptor?.rawValue ?? -1 }

    public var readable: Bool { flags & VFIO.regionFlagRead != 0 }
    public var writable: Bool { flags & VFIO.regionFlagWrite != 0 }
    public var mappable: Bool { flags & VFIO.regionFlagMmap != 0 }
}

/// DEVICE_GET_IRQ_INFO's answer.
public struct IRQInfo: Equatable, Sendable {
    public var flags: UInt32
    public var index: UInt32
    public var count: UInt32
    public init(flags: UInt32, index: UInt32, count: UInt32) { self.flags = flags; self.index = index; self.count = count }
}

extension Array where Element == UInt8 {
    mutating func put32(_ v: UInt32) { for i in 0..<4 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    mutating func put64(_ v: UInt64) { for i in 0..<8 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    mutating func put16(_ v: UInt16) { append(UInt8(v & 0xff)); append(UInt8(v >> 8)) }
}

extension VFIOUserClient {
    /// VERSION 0.0 with `json` (QEMU's capabilities by default); returns the
    /// server's capabilities.
    @discardableResult
    public func negotiate(json: String = VFIOUserClient.qemuCapabilitiesJSON, major: UInt16 = 0, minor: UInt16 = 0) throws(ClientError) -> Capabilities {
        var p: [UInt8] = []
        p.put16(major); p.put16(minor)
        p += Array(json.utf8); p.append(0)
        let r = try request(.version, payload: p)
        guard r.payload.count > 4, r.payload.last == 0 else { throw .malformed("VERSION reply without NUL-terminated JSON") }
        guard r.u16(0) == 0, r.u16(2) <= minor else { throw .malformed("incompatible server version \(r.u16(0)).\(r.u16(2))") }
        let caps: Capabilities
        do {
            caps = try r.payload.withUnsafeBytes { (b) throws(ProtocolError) in
                try Capabilities.parse(json: UnsafeRawBufferPointer(rebasing: b[4..<(b.count - 1)]))
            }
        } catch { throw .malformed("server capabilities: \(error)") }
        serverVersionJSON = String(decoding: r.payload[4..<(r.payload.count - 1)], as: UTF8.self)
        return caps
    }

    public func deviceInfo() throws(ClientError) -> DeviceInfo {
        var p: [UInt8] = []
        p.put32(16); p.put32(0); p.put32(0); p.put32(0)
        let r = try request(.deviceGetInfo, payload: p)
        guard r.payload.count == 16 else { throw .malformed("DEVICE_GET_INFO reply size \(r.payload.count)") }
        return DeviceInfo(flags: r.u32(4), regionCount: r.u32(8), irqCount: r.u32(12))
    }

    /// Region info the way QEMU asks: argsz 32 first, again with the full
    /// argsz when the region has capabilities.
    public func regionInfo(_ index: UInt32, argsz: UInt32 = 32) throws(ClientError) -> RegionInfo {
        var info = try regionInfoOnce(index, argsz: argsz)
        if info.argsz > argsz {
            info = try regionInfoOnce(index, argsz: info.argsz)
        }
        return info
    }

    /// One DEVICE_GET_REGION_INFO exchange.
    public func regionInfoOnce(_ index: UInt32, argsz: UInt32) throws(ClientError) -> RegionInfo {
        var p: [UInt8] = []
        p.put32(argsz); p.put32(0); p.put32(index); p.put32(0); p.put64(0); p.put64(0)
        let r = try request(.deviceGetRegionInfo, payload: p)
        guard r.payload.count >= 32, r.payload.count <= Int(argsz) else {
            for fd in r.fds { close(fd) }
            throw .malformed("region info reply of \(r.payload.count) bytes for argsz \(argsz)")
        }
        guard r.fds.count <= 1 else {
            for fd in r.fds { close(fd) }
            throw .malformed("region info reply with \(r.fds.count) descriptors")
        }
        var info = RegionInfo(argsz: r.u32(0), flags: r.u32(4), index: r.u32(8), capabilityOffset: r.u32(12),
                              size: r.u64(16), offset: r.u64(24), descriptor: r.fds.first.flatMap { SharedDescriptor(adoptingRaw: $0) })
        if info.flags & VFIO.regionFlagCaps != 0 {
            var next = Int(info.capabilityOffset)
            var seen = 0
            while next != 0 {
                guard next >= 32, next + 8 <= r.payload.count, seen < 16 else { throw .malformed("capability chain") }
                seen += 1
                let id = r.u16(next), following = Int(r.u32(next + 4))
                if id == VFIO.regionCapSparseMmap {
                    let count = Int(r.u32(next + 8))
                    guard next + 16 + 16 * count <= r.payload.count else { throw .malformed("sparse mmap areas") }
                    for i in 0..<count { info.sparseAreas.append((r.u64(next + 16 + 16 * i), r.u64(next + 24 + 16 * i))) }
                } else if id == VFIO.regionCapType {
                    guard next + 16 <= r.payload.count else { throw .malformed("type capability") }
                    info.type = (r.u32(next + 8), r.u32(next + 12))
                }
                guard following == 0 || following > next else { throw .malformed("capability chain loops") }
                next = following
            }
        }
        return info
    }

    public func irqInfo(_ index: UInt32) throws(ClientError) -> IRQInfo {
        var p: [UInt8] = []
        p.put32(16); p.put32(0); p.put32(index); p.put32(0)
        let r = try request(.deviceGetIRQInfo, payload: p)
        guard r.payload.count == 16 else { throw .malformed("IRQ info reply size") }
        return IRQInfo(flags: r.u32(4), index: r.u32(8), count: r.u32(12))
    }

    /// DEVICE_SET_IRQS. Eventfds travel as SCM_RIGHTS; `bools` for DATA_BOOL.
    public func setIRQs(index: UInt32, flags: UInt32, start: UInt32 = 0, count: UInt32, fds: [Int32] = [], bools: [UInt8] = []) throws(ClientError) {
        var p: [UInt8] = []
        p.put32(UInt32(20 + bools.count)); p.put32(flags); p.put32(index); p.put32(start); p.put32(count)
        p += bools
        try request(.deviceSetIRQs, payload: p, fds: fds)
    }

    /// REGION_READ returning the bytes.
    public func read(region: UInt32, offset: UInt64, count: Int) throws(ClientError) -> [UInt8] {
        var p: [UInt8] = []
        p.put64(offset); p.put32(region); p.put32(UInt32(count))
        let r = try request(.regionRead, payload: p)
        guard r.payload.count == 16 + count, r.u32(12) == UInt32(count) else { throw .malformed("REGION_READ reply size") }
        return Array(r.payload[16...])
    }

    /// REGION_WRITE of `bytes`; `posted` sends No_reply and does not wait.
    public func write(region: UInt32, offset: UInt64, bytes: [UInt8], posted: Bool = false) throws(ClientError) {
        var p: [UInt8] = []
        p.put64(offset); p.put32(region); p.put32(UInt32(bytes.count))
        p += bytes
        let r = try request(.regionWrite, payload: p, flags: posted ? Header.noReply : 0)
        if !posted { guard r.payload.count == 16 else { throw .malformed("REGION_WRITE reply size") } }
    }

    /// Little-endian integer helpers over region reads/writes.
    public func read8(region: UInt32, offset: UInt64) throws(ClientError) -> UInt8 { try read(region: region, offset: offset, count: 1)[0] }
    public func read16(region: UInt32, offset: UInt64) throws(ClientError) -> UInt16 {
        let b = try read(region: region, offset: offset, count: 2); return UInt16(b[0]) | UInt16(b[1]) << 8
    }
    public func read32(region: UInt32, offset: UInt64) throws(ClientError) -> UInt32 {
        let b = try read(region: region, offset: offset, count: 4)
        return b.enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
    }
    public func write8(region: UInt32, offset: UInt64, _ v: UInt8) throws(ClientError) { try write(region: region, offset: offset, bytes: [v]) }
    public func write16(region: UInt32, offset: UInt64, _ v: UInt16) throws(ClientError) {
        try write(region: region, offset: offset, bytes: [UInt8(v & 0xff), UInt8(v >> 8)])
    }
    public func write32(region: UInt32, offset: UInt64, _ v: UInt32, posted: Bool = false) throws(ClientError) {
        var b: [UInt8] = []; b.put32(v)
        try write(region: region, offset: offset, bytes: b, posted: posted)
    }

    public func dmaMap(address: UInt64, size: UInt64, flags: UInt32 = VFIO.dmaMapRead | VFIO.dmaMapWrite,
                       fd: Int32? = nil, offset: UInt64 = 0) throws(ClientError) {
        var p: [UInt8] = []
        p.put32(32); p.put32(flags); p.put64(offset); p.put64(address); p.put64(size)
        try request(.dmaMap, payload: p, fds: fd.map { [$0] } ?? [])
    }

    public func dmaUnmap(address: UInt64, size: UInt64, flags: UInt32 = 0) throws(ClientError) {
        var p: [UInt8] = []
        p.put32(24); p.put32(flags); p.put64(address); p.put64(size)
        try request(.dmaUnmap, payload: p)
    }

    public func reset() throws(ClientError) { try request(.deviceReset) }

    /// DEVICE_FEATURE; returns the reply payload after the 8-byte header.
    @discardableResult
    public func feature(_ feature: UInt32, flags: UInt32, data: [UInt8] = [], argsz: UInt32? = nil) throws(ClientError) -> [UInt8] {
        var p: [UInt8] = []
        p.put32(argsz ?? UInt32(max(16, 8 + data.count))); p.put32(feature | flags)
        p += data
        let r = try request(.deviceFeature, payload: p)
        return Array(r.payload.dropFirst(8))
    }

    /// Migration v2 device state (MIG_DEVICE_STATE GET).
    public func migrationState() throws(ClientError) -> DeviceState {
        let d = try feature(VFIO.featureMigDeviceState, flags: VFIO.featureGet)
        guard d.count >= 4, let s = DeviceState(rawValue: UInt32(d[0]) | UInt32(d[1]) << 8 | UInt32(d[2]) << 16 | UInt32(d[3]) << 24)
        else { throw .malformed("device state") }
        return s
    }

    /// Changes the migration state (MIG_DEVICE_STATE SET).
    public func setMigrationState(_ s: DeviceState) throws(ClientError) {
        var d: [UInt8] = []
        d.put32(s.rawValue); d.put32(UInt32(bitPattern: -1))
        try feature(VFIO.featureMigDeviceState, flags: VFIO.featureSet, data: d)
    }

    /// Reads the whole migration stream (MIG_DATA_READ until a short chunk).
    public func readMigrationData(chunk: UInt32 = 4096) throws(ClientError) -> [UInt8] {
        var out: [UInt8] = []
        while true {
            let part = try readMigrationChunk(chunk)
            out += part
            if part.count < Int(chunk) { return out }
        }
    }

    /// One MIG_DATA_READ of at most `size` bytes (fewer at the end of the stream).
    public func readMigrationChunk(_ size: UInt32) throws(ClientError) -> [UInt8] {
        var p: [UInt8] = []
        p.put32(8 + size); p.put32(size)
        let r = try request(.migDataRead, payload: p)
        guard r.payload.count >= 8, r.payload.count == 8 + Int(r.u32(4)), r.u32(4) <= size else { throw .malformed("MIG_DATA_READ reply") }
        return Array(r.payload[8...])
    }

    /// Writes a migration stream (MIG_DATA_WRITE in chunks).
    public func writeMigrationData(_ data: [UInt8], chunk: Int = 4096) throws(ClientError) {
        var at = 0
        repeat {
            let n = min(chunk, data.count - at)
            var p: [UInt8] = []
            p.put32(UInt32(8 + n)); p.put32(UInt32(n))
            p += data[at..<(at + n)]
            try request(.migDataWrite, payload: p)
            at += n
        } while at < data.count
    }
}
