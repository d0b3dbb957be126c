import Glibc
import PCI

private let none = UInt32.max

/// A display device's part of a handover: its display socket (viewers
/// reconnect to the same listener; their connections end with the old
/// process) and the plane ids it has handed out, so the new process
/// answers the id a client holds with the same layout and never gives an
/// old id to a new layout.
public struct DisplaySection: Equatable, Sendable {
    /// Which device of the handover ("" for `umdev serve`'s one).
    public var instance: String
    /// The display socket's index, if the device has one.
    public var listener: UInt32?
    /// Whether the display socket's file is the server's to remove on stop.
    public var ownsSocketFile: Bool
    /// Where the display socket's file is ("" when it has none).
    public var socketPath: String
    /// The id the device's next new layout gets (0: a fixed plane).
    public var nextPlaneID: UInt32
    /// The recent enabled planes (at most `PlanePublisher.recentCount`).
    public var recent: [DisplayPlane]

    public init(instance: String, listener: UInt32?, ownsSocketFile: Bool, socketPath: String, nextPlaneID: UInt32, recent: [DisplayPlane]) {
        self.instance = instance; self.listener = listener; self.ownsSocketFile = ownsSocketFile
        self.socketPath = socketPath; self.nextPlaneID = nextPlaneID; self.recent = recent
    }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(instance); w.u32(listener ?? none); w.u8(ownsSocketFile ? 1 : 0); w.name(socketPath)
        w.u32(nextPlaneID)
        let planes = recent.prefix(PlanePublisher.recentCount)
        w.u8(UInt8(planes.count))
        for p in planes {
            w.u8(p.kind.rawValue)
            w.u32(p.fourcc); w.u32(p.width); w.u32(p.height); w.u32(p.stride)
            w.u64(p.size); w.u32(UInt32(truncatingIfNeeded: p.region)); w.u64(p.offset); w.u32(p.id)
        }
        return Handover.Section(type: SectionType.display.rawValue, required: true, payload: w.bytes)
    }

    public init(_ payload: [UInt8], descriptorCount: Int) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover display section")
        instance = try r.name()
        let l = try r.u32()
        if l == none { listener = nil } else {
            guard Int(l) < descriptorCount else { throw DeviceError(EINVAL, "handover names descriptor \(l) for the display socket but \(descriptorCount) came with it") }
            listener = l
        }
        switch try r.u8() {
        case 0: ownsSocketFile = false
        case 1: ownsSocketFile = true
        case let v: throw DeviceError(EINVAL, "handover display section: owns-socket-file is \(v), not 0 or 1")
        }
        socketPath = try r.name()
        guard socketPath.isEmpty || (socketPath.hasPrefix("/") && !socketPath.utf8.contains(0)) else {
            throw DeviceError(EINVAL, "handover display section: the socket path \"\(socketPath.prefix(64))\" is not absolute")
        }
        guard listener != nil || (socketPath.isEmpty && !ownsSocketFile) else {
            throw DeviceError(EINVAL, "handover display section: a socket path or file without a display socket")
        }
        nextPlaneID = try r.u32()
        let n = Int(try r.u8())
        guard n <= PlanePublisher.recentCount else { throw DeviceError(EINVAL, "handover display section: \(n) recent planes, at most \(PlanePublisher.recentCount)") }
        var planes: [DisplayPlane] = []
        for _ in 0..<n {
            guard let kind = DisplayPlane.Kind(rawValue: try r.u8()) else { throw DeviceError(EINVAL, "handover display section: a plane of unknown kind") }
            let fourcc = try r.u32(), width = try r.u32(), height = try r.u32(), stride = try r.u32()
            let size = try r.u64(), region = try r.u32(), offset = try r.u64(), id = try r.u32()
            let p = DisplayPlane(kind: kind, fourcc: fourcc, width: width, height: height, stride: stride, size: size,
                                 region: Int(region), offset: offset, id: id)
            // What a device could have published: enabled, an id, size = stride × height, no wrap.
            guard fourcc != 0, id != 0, width != 0, height != 0, size == UInt64(stride) * UInt64(height),
                  offset <= UInt64.max - size else {
                throw DeviceError(EINVAL, "handover display section: a malformed plane (\(p))")
            }
            planes.append(p)
        }
        recent = planes
        try r.finish()
    }
}
