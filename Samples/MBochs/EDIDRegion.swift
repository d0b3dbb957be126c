import Glibc

/// The EDID region (VFIO_REGION_SUBTYPE_GFX_EDID): how the host gives the
/// guest a monitor description. Its first 24 bytes are the kernel's
/// `struct vfio_region_gfx_edid`; the blob lives at `blobOffset`. The guest
/// reads the blob at BAR2 0x000 while the link is up.
///
/// Update protocol (include/uapi/linux/vfio.h): link down, write the blob
/// and its size, link up. umdev enforces it: every access outside these
/// rules fails with an errno instead of being dropped.
public struct EDIDRegion: Sendable, Equatable {
    /// Layout of the region (as the sample: one page, blob in its second half).
    public static let regionSize = 4096
    public static let blobOffset = 0x800
    public static let maxBlobSize = 0x400

    /// Field offsets of `struct vfio_region_gfx_edid` (all u32).
    public enum Field {
        public static let edidOffset = 0x00
        public static let edidMaxSize = 0x04
        public static let edidSize = 0x08
        public static let maxXres = 0x0c
        public static let maxYres = 0x10
        public static let linkState = 0x14
        /// End of the structure.
        public static let end = 0x18
    }

    /// VFIO_DEVICE_GFX_LINK_STATE_*.
    public enum Link {
        public static let up: UInt32 = 1
        public static let down: UInt32 = 2
    }

    public let maxXres: UInt32
    public let maxYres: UInt32
    public private(set) var edidSize: UInt32
    public private(set) var linkState: UInt32
    private var blob: [UInt8]

    /// Starts with `initial` as the blob and the link up, so a guest that
    /// boots before any host-side writer still finds a monitor.
    public init(maxXres: UInt32, maxYres: UInt32, initial: [UInt8]) {
        precondition(initial.count <= Self.maxBlobSize)
        self.maxXres = maxXres
        self.maxYres = maxYres
        blob = initial + [UInt8](repeating: 0, count: Self.maxBlobSize - initial.count)
        edidSize = UInt32(initial.count)
        linkState = initial.isEmpty ? Link.down : Link.up
    }

    /// The blob the guest currently sees (empty while the link is down).
    public var guestBlob: ArraySlice<UInt8> { linkState == Link.up ? blob[0..<Int(edidSize)] : [] }

    /// A byte of BAR2 0x000–0x3ff: the blob while the link is up, else
    /// all-ones, as an empty bus reads.
    @inline(__always)
    func guestByte(_ offset: Int) -> UInt8 {
        linkState == Link.up && offset < Int(edidSize) ? blob[offset] : 0xff
    }

    private func field(_ offset: Int) -> UInt32 {
        switch offset {
        case Field.edidOffset: UInt32(Self.blobOffset)
        case Field.edidMaxSize: UInt32(Self.maxBlobSize)
        case Field.edidSize: edidSize
        case Field.maxXres: maxXres
        case Field.maxYres: maxYres
        default: linkState
        }
    }

    /// A host read at `offset`; returns 0 or an errno.
    public func read(offset: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        if offset < Field.end {
            guard buffer.count == 4, offset % 4 == 0 else { return EINVAL }
            buffer.storeBytes(of: field(offset).littleEndian, as: UInt32.self)
            return 0
        }
        guard let at = blobRange(offset, buffer.count) else { return EINVAL }
        blob.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + at, byteCount: buffer.count) }
        return 0
    }

    /// A host write at `offset`; returns 0 or an errno:
    /// EINVAL for a bad width, place or value, EPERM for a read-only field,
    /// EBUSY for the blob or its size while the link is up.
    public mutating func write(offset: Int, data: UnsafeRawBufferPointer) -> Int32 {
        if offset < Field.end {
            guard data.count == 4, offset % 4 == 0 else { return EINVAL }
            let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
            switch offset {
            case Field.edidSize:
                guard linkState != Link.up else { return EBUSY }
                guard value <= UInt32(Self.maxBlobSize) else { return EINVAL }
                edidSize = value
            case Field.linkState:
                switch value {
                case Link.down: linkState = Link.down
                case Link.up:
                    // Only a well-formed EDID goes on the wire.
                    guard EDID.isValid(blob[0..<Int(edidSize)]) else { return EINVAL }
                    linkState = Link.up
                default: return EINVAL
                }
            default:
                return EPERM
            }
            return 0
        }
        guard let at = blobRange(offset, data.count) else { return EINVAL }
        guard linkState != Link.up else { return EBUSY }
        blob.withUnsafeMutableBytes { ($0.baseAddress! + at).copyMemory(from: data.baseAddress!, byteCount: data.count) }
        return 0
    }

    /// The blob index of an access that lies wholly inside the blob window.
    private func blobRange(_ offset: Int, _ count: Int) -> Int? {
        guard offset >= Self.blobOffset, offset - Self.blobOffset + count <= Self.maxBlobSize else { return nil }
        return offset - Self.blobOffset
    }

    /// The whole 1 KiB blob window, for saving.
    public var blobBytes: [UInt8] { blob }

    /// Blob, size and link at once, for a migration's restore (checked by the caller).
    mutating func restore(blob newBlob: [UInt8], size: UInt32, link: UInt32) {
        blob = newBlob
        edidSize = size
        linkState = link
    }
}
