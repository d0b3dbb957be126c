import Descriptors
import Glibc
import VFIOUser

extension VFIOUserClient {
    /// QEMU's capabilities plus umdev's display-plane key (§22): what a viewer proposes.
    public static let planeCapabilitiesJSON =
        #"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "write_multiple": true, "x-umdev-gfx-plane": {"version": 1}}}"#

    /// QUERY_GFX_PLANE as sent; returns the server's structure.
    public func queryPlane(flags: UInt32, planeType: UInt32 = VFIO.drmPlanePrimary,
                           argsz: UInt32 = UInt32(GfxPlaneInfo.size)) throws(ClientError) -> GfxPlaneInfo {
        var p: [UInt8] = []
        p.put32(argsz); p.put32(flags); p.put32(planeType)
        p += [UInt8](repeating: 0, count: GfxPlaneInfo.size - p.count)
        let r = try request(.queryGfxPlane, payload: p)
        for fd in r.fds { close(fd) }
        guard r.payload.count >= GfxPlaneInfo.minimumSize, r.payload.count <= Int(argsz) else {
            throw .malformed("QUERY_GFX_PLANE reply of \(r.payload.count) bytes")
        }
        return r.payload.withUnsafeBytes { GfxPlaneInfo($0) }
    }

    /// Which kind of plane the device offers, by the kernel's PROBE queries
    /// (dmabuf first, as QEMU probes); nil when it offers none.
    public func probePlaneKind() throws(ClientError) -> PlaneKind? {
        for kind in [PlaneKind.dmabuf, .region] {
            do {
                _ = try queryPlane(flags: VFIO.gfxPlaneProbe | kind.flag)
                return kind
            } catch .remote(EINVAL) {
                continue
            }
        }
        return nil
    }

    /// GET_GFX_DMABUF: the buffer's descriptor (closed when the last
    /// reference goes), and where the buffer lies in that file.
    public func dmabuf(id: UInt32) throws(ClientError) -> (descriptor: SharedDescriptor, offset: UInt64, size: UInt64) {
        var p: [UInt8] = []
        p.put32(id)
        let r = try request(.getGfxDmabuf, payload: p)
        guard r.payload.count == GfxDmabuf.size, r.fds.count == 1 else {
            for fd in r.fds { close(fd) }
            throw .malformed("GET_GFX_DMABUF reply of \(r.payload.count) bytes with \(r.fds.count) descriptors")
        }
        let d = r.payload.withUnsafeBytes { GfxDmabuf($0) }
        guard let descriptor = SharedDescriptor(adoptingRaw: r.fds[0]) else { throw .malformed("GET_GFX_DMABUF reply without a descriptor") }
        return (descriptor, d.offset, d.size)
    }
}

/// A device's primary plane, mapped for reading: the picture is read
/// through shared memory, never over the socket.
///
/// Memory is mapped whole and kept: a region plane's region once, and for
/// dmabuf planes each distinct file a GET_GFX_DMABUF descriptor names (by
/// device and inode), so a buffer in a file already mapped costs no new
/// mapping. umdev hands out one VRAM memfd for every buffer, so a guest
/// that flips or changes modes never causes a remap, and a pointer into a
/// frame stays valid as long as the `PlaneMapping` lives (what a VNC server
/// reading the frame from other threads needs). Ids are remembered for the
/// sixteen most recent buffers, as the device remembers them, and at most
/// five files stay mapped (QEMU's display code keeps five dmabufs).
public final class PlaneMapping {
    /// What is on screen: the first pixel and the layout. The pixels stay
    /// mapped while the `PlaneMapping` lives.
    public struct Frame {
        public var pixels: UnsafeRawPointer
        public var fourcc: UInt32
        public var width: Int
        public var height: Int
        public var stride: Int
        /// The plane id (dmabuf id; the region index for a region plane).
        public var id: UInt32
        public var kind: PlaneKind
        /// Where the pixels start in their region or file.
        public var offset: UInt64
        /// Bytes from the first pixel to the end of the last line.
        public var byteCount: Int { stride * (height - 1) + width * (bytesPerPixel ?? 4) }
        public var bytesPerPixel: Int? {
            DRMFormat.bytesPerPixel(fourcc)
        }
    }

    static let mappedFiles = 5
    static let rememberedIDs = 16

    public let client: VFIOUserClient
    public let kind: PlaneKind
    /// A mapping of a whole region or file.
    private struct Mapped {
        var device: UInt64
        var inode: UInt64
        var base: UnsafeMutableRawPointer
        var length: Int
    }
    private var region: (index: UInt32, map: Mapped)?
    private var files: [Mapped] = []
    /// Where recent dmabuf ids live: the file and the buffer's place in it.
    private var buffers: [(id: UInt32, device: UInt64, inode: UInt64, offset: UInt64, size: UInt64)] = []
    /// The last plane the server reported (also for disabled planes).
    public private(set) var lastInfo: GfxPlaneInfo?
    /// GET_GFX_DMABUF calls and mmaps made so far (for tests and benchmarks).
    public private(set) var dmabufRequests = 0
    public private(set) var mapCount = 0

    /// Probes the device's plane kind; fails with `.remote(EINVAL)` if it has no display.
    public init(client: VFIOUserClient) throws(ClientError) {
        self.client = client
        guard let kind = try client.probePlaneKind() else { throw .remote(EINVAL) }
        self.kind = kind
    }

    deinit {
        if let region { munmap(region.map.base, region.map.length) }
        for f in files { munmap(f.base, f.length) }
    }

    /// Queries the primary plane and returns it mapped; nil while the plane
    /// is disabled. Throws if the server's answer does not fit what it maps.
    public func refresh() throws(ClientError) -> Frame? {
        let info = try client.queryPlane(flags: kind.flag)
        lastInfo = info
        guard info.drmFormat != 0, info.width > 0, info.height > 0 else { return nil }
        var frame = Frame(pixels: UnsafeRawPointer(bitPattern: 1)!, fourcc: info.drmFormat, width: Int(info.width),
                          height: Int(info.height), stride: Int(info.stride), id: info.id, kind: kind, offset: 0)
        guard let bpp = frame.bytesPerPixel else { throw .malformed("plane format 0x\(String(info.drmFormat, radix: 16)) is not one umdev reads") }
        guard frame.stride >= frame.width * bpp else { throw .malformed("plane stride below its width") }
        let (map, offset) = kind == .region ? (try mapRegion(info.id), UInt64(0)) : try mapBuffer(info.id)
        guard offset <= UInt64(map.length), frame.byteCount <= map.length - Int(offset) else {
            throw .malformed("plane larger than its memory")
        }
        frame.offset = offset
        frame.pixels = UnsafeRawPointer(map.base + Int(offset))
        return frame
    }

    private func mapRegion(_ index: UInt32) throws(ClientError) -> Mapped {
        if let region, region.index == index { return region.map }
        let info = try client.regionInfo(index)
        guard info.mappable, info.fd >= 0, info.size > 0, info.size <= UInt64(Int.max) else {
            throw .malformed("plane region \(index) cannot be mapped")
        }
        let m = try map(fd: info.fd, offset: info.offset, length: Int(info.size), device: 0, inode: 0)
        if let old = region { munmap(old.map.base, old.map.length) }
        region = (index, m)
        return m
    }

    private func mapBuffer(_ id: UInt32) throws(ClientError) -> (Mapped, UInt64) {
        if let b = buffers.first(where: { $0.id == id }),
           let f = files.first(where: { $0.device == b.device && $0.inode == b.inode }) {
            return (f, b.offset)
        }
        let d: (descriptor: SharedDescriptor, offset: UInt64, size: UInt64)
        do {
            d = try client.dmabuf(id: id)
        } catch {
            // The kernel's rule: a buffer that does not start on a page cannot be exported.
            if error.remoteErrno == EINVAL { throw .malformed("dmabuf \(id) does not start on a page boundary, so it cannot be exported") }
            throw error
        }
        dmabufRequests += 1
        let fd = d.descriptor.rawValue
        guard d.size > 0, d.size <= UInt64(Int.max), d.offset % 4096 == 0 else {
            throw .malformed("dmabuf of size \(d.size) at offset \(d.offset)")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .system(errno, "fstat of a dmabuf") }
        let device = UInt64(st.st_dev), inode = UInt64(st.st_ino)
        let fileSize = UInt64(max(0, st.st_size))
        guard fileSize >= d.offset + d.size else { throw .malformed("dmabuf \(id) lies beyond the end of its file") }
        if buffers.count == Self.rememberedIDs { buffers.removeFirst() }
        buffers.append((id, device, inode, d.offset, d.size))
        if let i = files.firstIndex(where: { $0.device == device && $0.inode == inode }) {
            let hit = files.remove(at: i)
            files.append(hit)
            return (hit, d.offset)
        }
        guard fileSize <= UInt64(Int.max) else { throw .malformed("dmabuf file too large to map") }
        let m = try map(fd: fd, offset: 0, length: Int(fileSize), device: device, inode: inode)
        if files.count == Self.mappedFiles {
            let evicted = files.removeFirst()
            munmap(evicted.base, evicted.length)
            buffers.removeAll { $0.device == evicted.device && $0.inode == evicted.inode }
        }
        files.append(m)
        return (m, d.offset)
    }

    private func map(fd: Int32, offset: UInt64, length: Int, device: UInt64, inode: UInt64) throws(ClientError) -> Mapped {
        guard let p = mmap(nil, length, PROT_READ, MAP_SHARED, fd, off_t(offset)), p != MAP_FAILED else {
            throw .system(errno, "mmap of the plane")
        }
        mapCount += 1
        return Mapped(device: device, inode: inode, base: p, length: length)
    }
}
