import Glibc
import PCI
import SystemPackage
import VFIOUser

/// What the display-plane messages (Protocol/README.md §22) need from a
/// device, captured when it is served. Everything here is immutable or
/// thread-safe, so the display socket's threads answer from it without
/// touching the device.
public struct DisplayFacts: Sendable {
    /// Region or dmabuf planes; nil for a device without a display.
    public let kind: DisplayPlane.Kind?
    /// The device's published planes.
    public let planes: PlanePublisher?
    /// The memfd dmabuf planes live in (VRAM), handed out by GET_GFX_DMABUF.
    public let memoryFD: FileDescriptor?

    public init(device: VFIODevice) {
        if let display = device as? DisplayDevice {
            kind = display.planeKind
            planes = display.planes
            memoryFD = display.planeMemory.fd
        } else {
            kind = nil
            planes = nil
            memoryFD = nil
        }
    }

    /// The VFIO_GFX_PLANE_TYPE_* flag of this device's planes, if any.
    var kindFlag: UInt32? {
        switch kind {
        case .region?: VFIO.gfxPlaneRegion
        case .dmabuf?: VFIO.gfxPlaneDmabuf
        case nil: nil
        }
    }

    /// QUERY_GFX_PLANE, with the kernel's rules: PROBE together with exactly
    /// the device's kind succeeds and changes nothing; the kind alone fills
    /// in the plane; every other combination, and any query to a device
    /// without a display, is EINVAL. A plane that shows nothing is success
    /// with zeros. The reply is the structure, `argsz` bytes of it.
    func answer(_ q: GfxPlaneInfo, into w: inout MessageWriter) throws(ProtocolError) {
        let length = min(Int(q.argsz), GfxPlaneInfo.size)
        if q.flags & VFIO.gfxPlaneProbe != 0 {
            guard let kindFlag, q.flags == VFIO.gfxPlaneProbe | kindFlag else {
                throw .invalid("PROBE for a plane kind the device does not have")
            }
            q.encode(&w, bytes: length)
            return
        }
        guard let kindFlag, let planes, q.flags == kindFlag else { throw .invalid("plane kind is not the device's") }
        var r = GfxPlaneInfo(argsz: q.argsz, flags: q.flags, drmPlaneType: q.drmPlaneType)
        r.reserved = q.reserved
        // mbochs answers the primary plane only; mdpy answers every type but
        // the cursor with its framebuffer (QEMU's region path asks with
        // type 0). Neither device has a cursor.
        let shown = kind == .dmabuf ? q.drmPlaneType == VFIO.drmPlanePrimary : q.drmPlaneType != VFIO.drmPlaneCursor
        let p = planes.current()
        if shown && p.isEnabled {
            r.drmFormat = p.fourcc
            r.width = p.width
            r.height = p.height
            r.stride = p.stride
            r.size = UInt32(clamping: p.size)
            r.id = kind == .region ? UInt32(p.region) : p.id
        }
        r.encode(&w, bytes: length)
    }

    /// GET_GFX_DMABUF: the buffer a recent plane id names. Returns the
    /// descriptor to send with the reply: the VRAM memfd, the buffer at the
    /// page-aligned offset in the payload. Errors as the kernel's: ENOTTY
    /// for a device without dmabuf planes, ENOENT for an unknown id, EINVAL
    /// for a buffer that does not start on a page.
    func dmabuf(id: UInt32, into w: inout MessageWriter) throws(ProtocolError) -> FileDescriptor? {
        guard kind == .dmabuf, let planes else { throw ProtocolError(ENOTTY, "device has no dmabuf planes") }
        guard let p = planes.recent(id: id) else { throw ProtocolError(ENOENT, "no recent plane has this id") }
        guard p.offset % Limits.pageSize == 0 else { throw .invalid("plane does not start on a page boundary") }
        GfxDmabuf(id: id, offset: p.offset, size: p.size).encode(&w)
        return memoryFD
    }
}
