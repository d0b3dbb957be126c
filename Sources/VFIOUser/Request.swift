#if canImport(Glibc)
import Glibc
#endif

/// DMA_MAP payload (32 bytes).
public struct DMAMap: Equatable, Sendable {
    public static let size = 32
    public var argsz: UInt32 = 32
    public var flags: UInt32
    public var offset: UInt64
    public var address: UInt64
    public var size: UInt64
    public init(flags: UInt32, offset: UInt64, address: UInt64, size: UInt64) {
        self.flags = flags; self.offset = offset; self.address = address; self.size = size
    }
    public func encode(_ w: inout MessageWriter) {
        w.u32(argsz); w.u32(flags); w.u64(offset); w.u64(address); w.u64(size)
    }

    /// What makes a window acceptable, whoever proposes it (a client's
    /// DMA_MAP, or a handover from the previous process).
    public func check(withDescriptor: Bool) throws(ProtocolError) {
        let m = self
        guard m.flags & ~(VFIO.dmaMapRead | VFIO.dmaMapWrite) == 0 else { throw .invalid("unknown DMA_MAP flags") }
        guard m.size > 0 else { throw .invalid("DMA_MAP of zero bytes") }
        guard m.address &+ m.size > m.address || m.address &+ m.size == 0 else { throw .invalid("DMA_MAP range wraps") }
        let page = Limits.pageSize - 1
        guard m.address & page == 0, m.size & page == 0 else { throw .invalid("DMA_MAP range not page aligned") }
        guard !withDescriptor || m.offset & page == 0 else { throw .invalid("DMA_MAP file offset not page aligned") }
        guard withDescriptor || m.offset == 0 else { throw .invalid("DMA_MAP offset without a descriptor") }
        guard m.offset &+ m.size >= m.offset else { throw .invalid("DMA_MAP file range wraps") }
    }
}

/// DMA_UNMAP payload (24 bytes); the reply echoes it.
public struct DMAUnmap: Equatable, Sendable {
    public static let size = 24
    public var argsz: UInt32 = 24
    public var flags: UInt32
    public var address: UInt64
    public var size: UInt64
    public init(flags: UInt32 = 0, address: UInt64, size: UInt64) {
        self.flags = flags; self.address = address; self.size = size
    }
    public func encode(_ w: inout MessageWriter) { w.u32(argsz); w.u32(flags); w.u64(address); w.u64(size) }
}

/// DEVICE_SET_IRQS payload header (20 bytes) plus optional DATA_BOOL bytes.
public struct SetIRQs {
    public var argsz: UInt32
    public var flags: UInt32
    public var index: UInt32
    public var start: UInt32
    public var count: UInt32
    /// The DATA_BOOL bytes (empty for NONE/EVENTFD).
    public var bools: UnsafeRawBufferPointer

    public var dataType: UInt32 { flags & VFIO.irqSetDataMask }
    public var action: UInt32 { flags & VFIO.irqSetActionMaskBits }
}

/// REGION_READ / REGION_WRITE payload: offset, region, count, data.
public struct RegionAccess {
    public static let headerSize = 16
    public var offset: UInt64
    public var region: UInt32
    public var count: UInt32
    /// Write data (empty for reads).
    public var data: UnsafeRawBufferPointer
    @inlinable
    public init(offset: UInt64, region: UInt32, count: UInt32, data: UnsafeRawBufferPointer) {
        self.offset = offset; self.region = region; self.count = count; self.data = data
    }

    /// A REGION_READ payload, checked: 16 bytes, a count within max_data_xfer_size.
    /// Inlinable: the server's request path decodes every access with it.
    @inlinable @inline(__always)
    public static func read(_ p: UnsafeRawBufferPointer) throws(ProtocolError) -> RegionAccess {
        guard p.count == headerSize else { throw .invalid("REGION_READ payload is not 16 bytes") }
        let count = p.u32(12)
        guard count <= UInt32(Limits.maxDataTransfer) else { throw .invalid("REGION_READ count above max_data_xfer_size") }
        return RegionAccess(offset: p.u64(0), region: p.u32(8), count: count, data: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// A REGION_WRITE payload, checked: a 16-byte header, a count within
    /// max_data_xfer_size and equal to the data that follows.
    @inlinable @inline(__always)
    public static func write(_ p: UnsafeRawBufferPointer) throws(ProtocolError) -> RegionAccess {
        guard p.count >= headerSize else { throw .invalid("REGION_WRITE payload shorter than 16 bytes") }
        let count = p.u32(12)
        guard count <= UInt32(Limits.maxDataTransfer) else { throw .invalid("REGION_WRITE count above max_data_xfer_size") }
        guard Int(count) == p.count - headerSize else { throw .invalid("REGION_WRITE count differs from the data size") }
        return RegionAccess(offset: p.u64(0), region: p.u32(8), count: count,
                            data: UnsafeRawBufferPointer(rebasing: p[headerSize...]))
    }
}

/// DEVICE_FEATURE payload.
public struct DeviceFeature {
    public var argsz: UInt32
    public var flags: UInt32
    public var data: UnsafeRawBufferPointer
    public var feature: UInt32 { flags & VFIO.featureMask }
    public var isGet: Bool { flags & VFIO.featureGet != 0 }
    public var isSet: Bool { flags & VFIO.featureSet != 0 }
    public var isProbe: Bool { flags & VFIO.featureProbe != 0 }
}

/// QUERY_GFX_PLANE payload: the kernel's `struct vfio_device_gfx_plane_info`
/// (64 bytes; 60, up to `region_index`, is the least a caller may send).
public struct GfxPlaneInfo: Equatable, Sendable {
    public static let size = 64
    /// offsetofend(region_index): the kernel's minimum argsz.
    public static let minimumSize = 60

    public var argsz: UInt32
    public var flags: UInt32
    public var drmPlaneType: UInt32
    public var drmFormat: UInt32 = 0
    public var drmFormatModifier: UInt64 = 0
    public var width: UInt32 = 0
    public var height: UInt32 = 0
    public var stride: UInt32 = 0
    public var size: UInt32 = 0
    public var xPos: UInt32 = 0
    public var yPos: UInt32 = 0
    public var xHot: UInt32 = 0
    public var yHot: UInt32 = 0
    /// `region_index` for a region plane, `dmabuf_id` for a dmabuf plane.
    public var id: UInt32 = 0
    public var reserved: UInt32 = 0

    public init(argsz: UInt32 = UInt32(GfxPlaneInfo.size), flags: UInt32, drmPlaneType: UInt32) {
        self.argsz = argsz; self.flags = flags; self.drmPlaneType = drmPlaneType
    }

    /// Reads the fields present in `p` (at least `minimumSize` bytes).
    public init(_ p: UnsafeRawBufferPointer) {
        argsz = p.u32(0); flags = p.u32(4); drmPlaneType = p.u32(8); drmFormat = p.u32(12)
        drmFormatModifier = p.u64(16); width = p.u32(24); height = p.u32(28); stride = p.u32(32); size = p.u32(36)
        xPos = p.u32(40); yPos = p.u32(44); xHot = p.u32(48); yHot = p.u32(52); id = p.u32(56)
        reserved = p.count >= 64 ? p.u32(60) : 0
    }

    /// Writes the first `bytes` bytes (60–64) of the structure.
    public func encode(_ w: inout MessageWriter, bytes: Int = GfxPlaneInfo.size) {
        w.u32(argsz); w.u32(flags); w.u32(drmPlaneType); w.u32(drmFormat); w.u64(drmFormatModifier)
        w.u32(width); w.u32(height); w.u32(stride); w.u32(size)
        w.u32(xPos); w.u32(yPos); w.u32(xHot); w.u32(yHot); w.u32(id)
        if bytes >= GfxPlaneInfo.size { w.u32(reserved) }
    }
}

/// GET_GFX_DMABUF's reply payload; the buffer's descriptor travels with it.
public struct GfxDmabuf: Equatable, Sendable {
    public static let size = 24
    public var id: UInt32
    /// Where the buffer starts in the descriptor's file (page-aligned).
    public var offset: UInt64
    /// The buffer's length in bytes (stride × height).
    public var size: UInt64
    public init(id: UInt32, offset: UInt64, size: UInt64) { self.id = id; self.offset = offset; self.size = size }
    public func encode(_ w: inout MessageWriter) { w.u32(id); w.u32(0); w.u64(offset); w.u64(size) }
    public init(_ p: UnsafeRawBufferPointer) { id = p.u32(0); offset = p.u64(8); size = p.u64(16) }
}

/// A client→server command, decoded and structurally validated. Payload
/// slices point into the receive buffer and are valid until the next receive.
public enum Request {
    case version(major: UInt16, minor: UInt16, capabilities: Capabilities)
    case dmaMap(DMAMap)
    case dmaUnmap(DMAUnmap)
    case deviceGetInfo(argsz: UInt32)
    case deviceGetRegionInfo(argsz: UInt32, index: UInt32)
    case deviceGetRegionIOFDs(argsz: UInt32, index: UInt32)
    case deviceGetIRQInfo(argsz: UInt32, index: UInt32)
    case deviceSetIRQs(SetIRQs)
    case regionRead(RegionAccess)
    case regionWrite(RegionAccess)
    case deviceReset
    case dirtyPages
    case regionWriteMulti(count: Int, entries: UnsafeRawBufferPointer)
    case deviceFeature(DeviceFeature)
    case migDataRead(argsz: UInt32, size: UInt32)
    case migDataWrite(argsz: UInt32, size: UInt32, data: UnsafeRawBufferPointer)
    case queryGfxPlane(GfxPlaneInfo)
    case getGfxDmabuf(id: UInt32)

    /// Decodes and validates one command. `fdCount` is how many descriptors
    /// arrived with it: only DMA_MAP (0–1) and SET_IRQS with DATA_EVENTFD may
    /// carry any. Every failure maps to the errno the reply should carry.
    public static func decode(_ h: Header, payload p: UnsafeRawBufferPointer, fdCount: Int) throws(ProtocolError) -> Request {
        guard h.flags & ~Header.knownFlags == 0 else { throw .invalid("unknown header flags") }
        guard h.isCommand else { throw .invalid("reply or unknown type sent as a request") }
        guard !h.isError, h.error == 0 else { throw .invalid("error fields set in a command") }
        guard let command = Command(rawValue: h.command) else { throw .invalid("unknown command") }
        let takesFDs = command == .dmaMap || command == .deviceSetIRQs
        guard fdCount == 0 || takesFDs else { throw .invalid("descriptors on a command that takes none") }
        let n = p.count

        switch command {
        case .version:
            guard n >= 4 else { throw .invalid("VERSION payload shorter than 4 bytes") }
            let major = p.u16(0), minor = p.u16(2)
            guard major == 0 else { throw ProtocolError(ENOTSUP, "unsupported major version") }
            var caps = Capabilities.unstated
            if n > 4 {
                guard n - 4 <= Limits.maxVersionJSON else { throw ProtocolError(E2BIG, "VERSION JSON too large") }
                guard p[n - 1] == 0 else { throw .invalid("VERSION JSON not NUL-terminated") }
                let text = UnsafeRawBufferPointer(rebasing: p[4..<(n - 1)])
                guard !text.contains(0) else { throw .invalid("NUL inside VERSION JSON") }
                if !text.isEmpty { caps = try Capabilities.parse(json: text) }
            }
            return .version(major: major, minor: minor, capabilities: caps)

        case .dmaMap:
            guard n == DMAMap.size else { throw .invalid("DMA_MAP payload is not 32 bytes") }
            guard p.u32(0) == UInt32(DMAMap.size) else { throw .invalid("DMA_MAP argsz is not 32") }
            guard fdCount <= 1 else { throw .invalid("DMA_MAP with more than one descriptor") }
            var m = DMAMap(flags: p.u32(4), offset: p.u64(8), address: p.u64(16), size: p.u64(24))
            m.argsz = p.u32(0)
            try m.check(withDescriptor: fdCount == 1)
            return .dmaMap(m)

        case .dmaUnmap:
            guard n == DMAUnmap.size else { throw .invalid("DMA_UNMAP payload is not 24 bytes") }
            var u = DMAUnmap(flags: p.u32(4), address: p.u64(8), size: p.u64(16))
            u.argsz = p.u32(0)
            guard u.argsz >= UInt32(DMAUnmap.size) else { throw .invalid("DMA_UNMAP argsz below 24") }
            guard u.flags & ~(VFIO.dmaUnmapAll | VFIO.dmaUnmapGetDirtyBitmap) == 0 else { throw .invalid("unknown DMA_UNMAP flags") }
            if u.flags & VFIO.dmaUnmapGetDirtyBitmap != 0 {
                guard u.flags & VFIO.dmaUnmapAll == 0 else { throw .invalid("UNMAP_ALL with a dirty bitmap") }
                throw ProtocolError(ENOTSUP, "dirty page logging is not supported")
            }
            if u.flags & VFIO.dmaUnmapAll != 0 {
                guard u.address == 0, u.size == 0 else { throw .invalid("UNMAP_ALL with an address or size") }
            } else {
                guard u.size > 0 else { throw .invalid("DMA_UNMAP of zero bytes") }
            }
            return .dmaUnmap(u)

        case .deviceGetInfo:
            guard n == 16 else { throw .invalid("DEVICE_GET_INFO payload is not 16 bytes") }
            guard p.u32(0) >= 16 else { throw .invalid("DEVICE_GET_INFO argsz below 16") }
            return .deviceGetInfo(argsz: p.u32(0))

        case .deviceGetRegionInfo:
            guard n == 32 else { throw .invalid("DEVICE_GET_REGION_INFO payload is not 32 bytes") }
            guard p.u32(0) >= 32 else { throw .invalid("DEVICE_GET_REGION_INFO argsz below 32") }
            return .deviceGetRegionInfo(argsz: p.u32(0), index: p.u32(8))

        case .deviceGetRegionIOFDs:
            guard n == 16 else { throw .invalid("DEVICE_GET_REGION_IO_FDS payload is not 16 bytes") }
            guard p.u32(0) >= 16 else { throw .invalid("DEVICE_GET_REGION_IO_FDS argsz below 16") }
            guard p.u32(4) == 0 else { throw .invalid("DEVICE_GET_REGION_IO_FDS flags must be 0") }
            guard p.u32(12) == 0 else { throw .invalid("DEVICE_GET_REGION_IO_FDS count must be 0 in a request") }
            return .deviceGetRegionIOFDs(argsz: p.u32(0), index: p.u32(8))

        case .deviceGetIRQInfo:
            guard n == 16 else { throw .invalid("DEVICE_GET_IRQ_INFO payload is not 16 bytes") }
            guard p.u32(0) >= 16 else { throw .invalid("DEVICE_GET_IRQ_INFO argsz below 16") }
            return .deviceGetIRQInfo(argsz: p.u32(0), index: p.u32(8))

        case .deviceSetIRQs:
            guard n >= 20 else { throw .invalid("DEVICE_SET_IRQS payload shorter than 20 bytes") }
            let s = SetIRQs(argsz: p.u32(0), flags: p.u32(4), index: p.u32(8), start: p.u32(12), count: p.u32(16),
                            bools: UnsafeRawBufferPointer(rebasing: p[20...]))
            guard s.argsz == UInt32(n) else { throw .invalid("DEVICE_SET_IRQS argsz differs from the payload size") }
            guard s.flags & ~(VFIO.irqSetDataMask | VFIO.irqSetActionMaskBits) == 0 else { throw .invalid("unknown SET_IRQS flags") }
            guard s.dataType.nonzeroBitCount == 1 else { throw .invalid("SET_IRQS needs exactly one DATA flag") }
            guard s.action.nonzeroBitCount == 1 else { throw .invalid("SET_IRQS needs exactly one ACTION flag") }
            guard s.start &+ s.count >= s.start else { throw .invalid("SET_IRQS start+count wraps") }
            switch s.dataType {
            case VFIO.irqSetDataBool:
                guard s.bools.count == Int(s.count) else { throw .invalid("SET_IRQS DATA_BOOL length differs from count") }
                guard fdCount == 0 else { throw .invalid("SET_IRQS DATA_BOOL with descriptors") }
            case VFIO.irqSetDataEventfd:
                guard s.bools.isEmpty else { throw .invalid("SET_IRQS DATA_EVENTFD with inline data") }
                guard fdCount == 0 || fdCount == Int(s.count) else { throw .invalid("SET_IRQS descriptor count differs from count") }
            default:
                guard s.bools.isEmpty else { throw .invalid("SET_IRQS DATA_NONE with inline data") }
                guard fdCount == 0 else { throw .invalid("SET_IRQS DATA_NONE with descriptors") }
            }
            if s.count == 0 {
                guard s.start == 0, s.action == VFIO.irqSetActionTrigger, s.dataType == VFIO.irqSetDataNone
                else { throw .invalid("SET_IRQS count 0 is only TRIGGER|DATA_NONE from 0") }
            }
            return .deviceSetIRQs(s)

        case .regionRead:
            return .regionRead(try .read(p))

        case .regionWrite:
            return .regionWrite(try .write(p))

        case .dmaRead, .dmaWrite:
            throw .invalid("DMA_READ/DMA_WRITE go from server to client")

        case .deviceReset:
            guard n == 0 else { throw .invalid("DEVICE_RESET takes no payload") }
            return .deviceReset

        case .dirtyPages:
            throw ProtocolError(ENOTSUP, "legacy dirty page tracking is not supported")

        case .regionWriteMulti:
            guard n >= 8 else { throw .invalid("REGION_WRITE_MULTI payload shorter than 8 bytes") }
            let count = p.u64(0)
            guard count >= 1, count <= UInt64(Limits.maxWriteMulti) else { throw .invalid("REGION_WRITE_MULTI count out of range") }
            guard n == 8 + 24 * Int(count) else { throw .invalid("REGION_WRITE_MULTI size differs from its count") }
            let entries = UnsafeRawBufferPointer(rebasing: p[8...])
            for i in 0..<Int(count) {
                let c = entries.u32(i * 24 + 12)
                guard c >= 1, c <= 8 else { throw .invalid("REGION_WRITE_MULTI entry count not 1–8") }
            }
            return .regionWriteMulti(count: Int(count), entries: entries)

        case .deviceFeature:
            guard n >= 8 else { throw .invalid("DEVICE_FEATURE payload shorter than 8 bytes") }
            let f = DeviceFeature(argsz: p.u32(0), flags: p.u32(4), data: UnsafeRawBufferPointer(rebasing: p[8...]))
            guard f.argsz >= 8 else { throw .invalid("DEVICE_FEATURE argsz below 8") }
            guard f.flags & ~(VFIO.featureMask | VFIO.featureGet | VFIO.featureSet | VFIO.featureProbe) == 0
            else { throw .invalid("unknown DEVICE_FEATURE flags") }
            guard f.isProbe || (f.isGet != f.isSet) else { throw .invalid("DEVICE_FEATURE needs exactly one of GET and SET") }
            return .deviceFeature(f)

        case .migDataRead:
            guard n == 8 else { throw .invalid("MIG_DATA_READ payload is not 8 bytes") }
            let argsz = p.u32(0), size = p.u32(4)
            guard size <= UInt32(Limits.maxDataTransfer) else { throw .invalid("MIG_DATA_READ size above max_data_xfer_size") }
            guard UInt64(argsz) >= 8 + UInt64(size) else { throw .invalid("MIG_DATA_READ argsz below 8 + size") }
            return .migDataRead(argsz: argsz, size: size)

        case .migDataWrite:
            guard n >= 8 else { throw .invalid("MIG_DATA_WRITE payload shorter than 8 bytes") }
            let argsz = p.u32(0), size = p.u32(4)
            guard size <= UInt32(Limits.maxDataTransfer) else { throw .invalid("MIG_DATA_WRITE size above max_data_xfer_size") }
            guard n == 8 + Int(size) else { throw .invalid("MIG_DATA_WRITE size differs from the data") }
            guard UInt64(argsz) >= 8 + UInt64(size) else { throw .invalid("MIG_DATA_WRITE argsz below 8 + size") }
            return .migDataWrite(argsz: argsz, size: size, data: UnsafeRawBufferPointer(rebasing: p[8...]))

        case .queryGfxPlane:
            guard n >= GfxPlaneInfo.minimumSize, n <= GfxPlaneInfo.size else { throw .invalid("QUERY_GFX_PLANE payload is not 60–64 bytes") }
            let q = GfxPlaneInfo(p)
            guard q.argsz >= UInt32(GfxPlaneInfo.minimumSize) else { throw .invalid("QUERY_GFX_PLANE argsz below 60") }
            guard q.argsz <= UInt32(n) else { throw .invalid("QUERY_GFX_PLANE argsz beyond the payload") }
            return .queryGfxPlane(q)

        case .getGfxDmabuf:
            guard n == 4 else { throw .invalid("GET_GFX_DMABUF payload is not 4 bytes") }
            return .getGfxDmabuf(id: p.u32(0))
        }
    }
}
