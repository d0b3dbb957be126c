import Glibc
import VFIOUser
import VFIOUserClient

/// Pixels a viewer owns (a converted frame), freed when the last holder
/// lets go: a VNC server keeps the one it shows until it shows another.
public final class PixelBuffer: @unchecked Sendable {
    // @unchecked: written by the watcher's thread; other threads only read
    // it (a torn read shows a torn picture, never touches freed memory).
    public let bytes: UnsafeMutableRawBufferPointer
    init(count: Int) { bytes = .allocate(byteCount: count, alignment: 16); bytes.initializeMemory(as: UInt8.self, repeating: 0) }
    deinit { bytes.deallocate() }
}

/// A rectangle of the screen, in pixels.
public struct Tile: Equatable, Sendable {
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int
    public init(x: Int, y: Int, width: Int, height: Int) { self.x = x; self.y = y; self.width = width; self.height = height }
}

/// Watches one device's primary plane for a live viewer: each `poll`
/// refreshes the mapping, and compares the picture with the one it last
/// reported, in 64×64 tiles, so a viewer sends only what changed.
///
/// The picture is always offered as XRGB8888 (32-bit, red/green/blue in
/// bits 16/8/0): the plane itself when it is in that format (no copy), else
/// a buffer converted on each poll.
public final class ScreenWatcher {
    public static let tileSize = 64

    /// What a poll found.
    public struct Update {
        /// The plane's layout, nil while nothing is shown.
        public var frame: PlaneMapping.Frame?
        /// XRGB8888 pixels of the whole screen and their stride: the plane's
        /// own memory (valid while the mapping lives) or `storage`.
        public var pixels: UnsafeRawPointer?
        public var stride: Int
        /// The converted buffer `pixels` points into, for formats other than
        /// XRGB8888; hold it as long as the pointer is in use.
        public var storage: PixelBuffer?
        /// The screen's size or format changed (or nothing was shown before):
        /// a viewer starts over with the whole picture.
        public var layoutChanged: Bool
        /// The plane moved to other memory (a flip or pan) without changing size.
        public var moved: Bool
        /// Tiles whose pixels differ from the last update's; every tile when
        /// the layout changed.
        public var changed: [Tile]

        /// Nothing on screen (a device that went away, or before the first look).
        public static var nothing: Update { Update(frame: nil, pixels: nil, stride: 0, storage: nil, layoutChanged: true, moved: false, changed: []) }

        public var width: Int { frame?.width ?? 0 }
        public var height: Int { frame?.height ?? 0 }
    }

    public let mapping: PlaneMapping
    private var last: PlaneMapping.Frame?
    /// The picture as last reported, XRGB8888, width × 4 bytes per line.
    private var previous: [UInt8] = []
    /// Converted pixels for formats other than XRGB8888.
    private var converted: PixelBuffer?

    public init(mapping: PlaneMapping) { self.mapping = mapping }

    /// Looks at the plane now.
    public func poll() throws(ClientError) -> Update {
        guard let frame = try mapping.refresh() else {
            let was = last != nil
            last = nil
            previous = []
            return Update(frame: nil, pixels: nil, stride: 0, storage: nil, layoutChanged: was, moved: false, changed: [])
        }
        let (pixels, stride, storage) = xrgb(frame)
        let sameLayout = last.map { $0.width == frame.width && $0.height == frame.height && $0.fourcc == frame.fourcc } ?? false
        let moved = sameLayout && (last?.pixels != frame.pixels || last?.stride != frame.stride)
        last = frame
        let rowBytes = frame.width * 4
        if !sameLayout || previous.count != rowBytes * frame.height {
            previous = [UInt8](repeating: 0, count: rowBytes * frame.height)
            copyRows(from: pixels, stride: stride, tile: Tile(x: 0, y: 0, width: frame.width, height: frame.height), rowBytes: rowBytes)
            return Update(frame: frame, pixels: pixels, stride: stride, storage: storage, layoutChanged: true, moved: false,
                          changed: Self.tiles(width: frame.width, height: frame.height))
        }
        var changed: [Tile] = []
        for tile in Self.tiles(width: frame.width, height: frame.height) where differs(pixels, stride: stride, tile: tile, rowBytes: rowBytes) {
            copyRows(from: pixels, stride: stride, tile: tile, rowBytes: rowBytes)
            changed.append(tile)
        }
        return Update(frame: frame, pixels: pixels, stride: stride, storage: storage, layoutChanged: false, moved: moved, changed: changed)
    }

    /// The whole screen cut into tiles, row by row.
    public static func tiles(width: Int, height: Int) -> [Tile] {
        var out: [Tile] = []
        out.reserveCapacity(((width + tileSize - 1) / tileSize) * ((height + tileSize - 1) / tileSize))
        for y in stride(from: 0, to: height, by: tileSize) {
            for x in stride(from: 0, to: width, by: tileSize) {
                out.append(Tile(x: x, y: y, width: min(tileSize, width - x), height: min(tileSize, height - y)))
            }
        }
        return out
    }

    /// The frame as XRGB8888: itself, or converted into a buffer that is
    /// replaced (not reused) when the size changes, so a holder of the old
    /// one keeps valid memory.
    private func xrgb(_ frame: PlaneMapping.Frame) -> (UnsafeRawPointer, Int, PixelBuffer?) {
        if frame.fourcc == DRMFormat.xrgb8888 { return (frame.pixels, frame.stride, nil) }
        let count = frame.width * frame.height * 4
        if converted?.bytes.count != count { converted = PixelBuffer(count: count) }
        let buffer = converted!
        PixelFormat.xrgb(frame, into: buffer.bytes.baseAddress!)
        return (UnsafeRawPointer(buffer.bytes.baseAddress!), frame.width * 4, buffer)
    }

    private func differs(_ pixels: UnsafeRawPointer, stride: Int, tile: Tile, rowBytes: Int) -> Bool {
        previous.withUnsafeBytes { old in
            for row in tile.y..<(tile.y + tile.height) {
                let a = pixels + row * stride + tile.x * 4
                let b = old.baseAddress! + row * rowBytes + tile.x * 4
                if memcmp(a, b, tile.width * 4) != 0 { return true }
            }
            return false
        }
    }

    private func copyRows(from pixels: UnsafeRawPointer, stride: Int, tile: Tile, rowBytes: Int) {
        previous.withUnsafeMutableBytes { old in
            for row in tile.y..<(tile.y + tile.height) {
                (old.baseAddress! + row * rowBytes + tile.x * 4).copyMemory(from: pixels + row * stride + tile.x * 4, byteCount: tile.width * 4)
            }
        }
    }
}
