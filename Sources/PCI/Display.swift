import Synchronization

/// What a display device shows now: the facts of the kernel's
/// `vfio_device_gfx_plane_info` for the primary plane, as a value.
///
/// A region plane (mdpy) lives in a region the client maps; a dmabuf plane
/// (mbochs) is a buffer inside VRAM that the client asks for by `id`.
public struct DisplayPlane: Sendable, Equatable, CustomStringConvertible {
    /// How a client reaches the pixels (the wire's PlaneKind).
    public typealias Kind = PlaneKind

    public var kind: Kind
    /// DRM fourcc; 0 means the plane is disabled (nothing on screen).
    public var fourcc: UInt32
    public var width: UInt32
    public var height: UInt32
    /// Bytes from one line to the next.
    public var stride: UInt32
    /// Bytes the plane spans: stride × height.
    public var size: UInt64
    /// The region holding the pixels: the display region of a region plane,
    /// the VRAM BAR of a dmabuf plane.
    public var region: Int
    /// Offset of the first visible pixel inside that region.
    public var offset: UInt64
    /// Changes exactly when the layout (format, size, stride, offset)
    /// changes; 0 for a disabled plane. A dmabuf plane's `dmabuf_id`.
    public var id: UInt32

    public init(kind: Kind, fourcc: UInt32, width: UInt32, height: UInt32, stride: UInt32, size: UInt64,
                region: Int, offset: UInt64, id: UInt32) {
        self.kind = kind; self.fourcc = fourcc; self.width = width; self.height = height
        self.stride = stride; self.size = size; self.region = region; self.offset = offset; self.id = id
    }

    /// Nothing on screen: every field 0, as the kernel reports it.
    public static func disabled(_ kind: Kind) -> DisplayPlane {
        DisplayPlane(kind: kind, fourcc: 0, width: 0, height: 0, stride: 0, size: 0, region: 0, offset: 0, id: 0)
    }

    public var isEnabled: Bool { fourcc != 0 }

    /// The same layout, ignoring the id.
    public func sameLayout(as other: DisplayPlane) -> Bool {
        var a = self, b = other
        a.id = 0; b.id = 0
        return a == b
    }

    public var description: String {
        guard isEnabled else { return "disabled" }
        return "\(DRMFormat.name(fourcc)) \(width)x\(height) stride \(stride) size \(size) region \(region) offset 0x\(String(offset, radix: 16)) id \(id)"
    }
}

/// The current plane of one device, and the planes it recently showed,
/// written by the device's thread and read by any other (viewers, the
/// display socket) without ever blocking the writer.
///
/// There is one writer at a time (the device's owner). Enabled planes are
/// also kept by id in `recentCount` slots (id mod `recentCount`), so a
/// client that asks for a buffer by an id it saw a moment ago still finds
/// it after the guest flipped to another.
public final class PlanePublisher: Sendable {
    /// How many recent layouts keep their ids.
    public static let recentCount = 16

    private let sequence = Atomic<UInt64>(0)
    private let now = PlaneCell()
    private let recentCells: [PlaneCell]
    private let kind: DisplayPlane.Kind

    /// Starts out publishing a disabled plane of `kind`.
    public init(kind: DisplayPlane.Kind) {
        self.kind = kind
        recentCells = (0..<Self.recentCount).map { _ in PlaneCell() }
    }

    /// Replaces the published plane. Called by the device's owner only.
    public func publish(_ p: DisplayPlane) {
        if p.isEnabled && p.id != 0 {
            let cell = recentCells[Int(p.id % UInt32(Self.recentCount))]
            if cell.load(kind: kind) != p { cell.store(p) }
        }
        now.store(p)
        sequence.add(1, ordering: .releasing)
    }

    /// The plane last published, read consistently from any thread.
    public func current() -> DisplayPlane { now.load(kind: kind) }

    /// The layout `id` stood for, if it is among the recent ones.
    public func recent(id: UInt32) -> DisplayPlane? {
        guard id != 0 else { return nil }
        let p = recentCells[Int(id % UInt32(Self.recentCount))].load(kind: kind)
        return p.id == id && p.isEnabled ? p : nil
    }

    /// The id a recent plane with `layout`'s layout had, if any.
    public func recentID(sameLayoutAs layout: DisplayPlane) -> UInt32? {
        for cell in recentCells {
            let p = cell.load(kind: kind)
            if p.isEnabled && p.sameLayout(as: layout) { return p.id }
        }
        return nil
    }

    /// The recent enabled planes, by slot: what a live upgrade hands over
    /// so the new process answers the same ids with the same layouts.
    public func recentPlanes() -> [DisplayPlane] {
        recentCells.map { $0.load(kind: kind) }.filter { $0.isEnabled && $0.id != 0 }
    }

    /// Puts planes a previous process showed back among the recent ones
    /// (before the device publishes again). Called by the device's owner only.
    public func seedRecent(_ planes: [DisplayPlane]) {
        for p in planes where p.isEnabled && p.id != 0 {
            recentCells[Int(p.id % UInt32(Self.recentCount))].store(p)
        }
        sequence.add(1, ordering: .releasing)
    }

    /// How many times a plane was published: a reader can tell cheaply
    /// whether anything changed since it last looked.
    public var generation: UInt64 { sequence.load(ordering: .acquiring) }
}

/// One plane in a sequence lock over atomic words: the writer bumps the
/// sequence to odd, stores the words, and bumps it to even; a reader retries
/// while the sequence is odd or changed under it.
final class PlaneCell: Sendable {
    private let sequence = Atomic<UInt64>(0)
    private let word0 = Atomic<UInt64>(0) // fourcc | id << 32
    private let word1 = Atomic<UInt64>(0) // width | height << 32
    private let word2 = Atomic<UInt64>(0) // stride | region << 32
    private let word3 = Atomic<UInt64>(0) // size
    private let word4 = Atomic<UInt64>(0) // offset

    func store(_ p: DisplayPlane) {
        let s = sequence.load(ordering: .relaxed)
        sequence.store(s &+ 1, ordering: .relaxed)
        atomicMemoryFence(ordering: .releasing)
        word0.store(UInt64(p.fourcc) | UInt64(p.id) << 32, ordering: .relaxed)
        word1.store(UInt64(p.width) | UInt64(p.height) << 32, ordering: .relaxed)
        word2.store(UInt64(p.stride) | UInt64(UInt32(truncatingIfNeeded: p.region)) << 32, ordering: .relaxed)
        word3.store(p.size, ordering: .relaxed)
        word4.store(p.offset, ordering: .relaxed)
        sequence.store(s &+ 2, ordering: .releasing)
    }

    func load(kind: DisplayPlane.Kind) -> DisplayPlane {
        while true {
            let before = sequence.load(ordering: .acquiring)
            if before & 1 != 0 { continue }
            let w0 = word0.load(ordering: .relaxed), w1 = word1.load(ordering: .relaxed)
            let w2 = word2.load(ordering: .relaxed), w3 = word3.load(ordering: .relaxed)
            let w4 = word4.load(ordering: .relaxed)
            atomicMemoryFence(ordering: .acquiring)
            guard sequence.load(ordering: .relaxed) == before else { continue }
            return DisplayPlane(kind: kind, fourcc: UInt32(truncatingIfNeeded: w0), width: UInt32(truncatingIfNeeded: w1),
                                height: UInt32(truncatingIfNeeded: w1 >> 32), stride: UInt32(truncatingIfNeeded: w2),
                                size: w3, region: Int(UInt32(truncatingIfNeeded: w2 >> 32)), offset: w4,
                                id: UInt32(truncatingIfNeeded: w0 >> 32))
        }
    }
}

/// A device that shows a picture. Its owner thread keeps `planes` current;
/// other threads read it and the shared memory, never the registers.
public protocol DisplayDevice: VFIODevice {
    /// Region planes (mdpy) or dmabuf planes (mbochs).
    var planeKind: DisplayPlane.Kind { get }
    /// The primary plane, published on every layout change, and recent ones by id.
    var planes: PlanePublisher { get }
    /// The memory the plane's region is backed by (framebuffer or VRAM).
    var planeMemory: SharedMemory { get }
    /// The id the next new layout gets (a live upgrade hands it over so ids
    /// are never reused for another layout).
    var nextPlaneID: UInt32 { get }
    /// Takes a previous process's next id; refused (false) when out of range.
    func adoptNextPlaneID(_ id: UInt32) -> Bool
}

extension DisplayDevice {
    /// A device with one fixed plane (mdpy) hands out no new ids.
    public var nextPlaneID: UInt32 { 0 }
    public func adoptNextPlaneID(_ id: UInt32) -> Bool { id == 0 }
}
