import CPNG
import Glibc

/// PNG files through libpng: written with its full API (our encoder in
/// CPNG, for the speed knobs), read with its simplified API.
public enum PNG {
    /// A libpng failure, with its message.
    public struct Failure: Error, CustomStringConvertible {
        public let message: String
        public var description: String { "PNG: \(message)" }
    }

    private static func message(_ image: png_image) -> String {
        withUnsafeBytes(of: image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// How pictures are compressed: fast enough for a live viewer, still
    /// small for screen content: zlib level 2, every row "up"-filtered
    /// (screens repeat down a column more than along a row). On a 1080p
    /// test pattern here: 14 ms and 53 KB, where libpng's defaults (level 6,
    /// the best of every filter per row) took 52 ms for 26 KB.
    static let level: Int32 = 2
    static let filter = Int32(PNG_FILTER_UP)
    static let strategy = Z_DEFAULT_STRATEGY

    /// Writes `picture` to `path` (replacing it), 8-bit RGB.
    public static func write(_ picture: RGBImage, to path: String) throws(Failure) {
        let bytes = try encode(picture)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure(message: "cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(message: "cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// The PNG encoding of `picture`, in memory.
    public static func encode(_ picture: RGBImage) throws(Failure) -> [UInt8] {
        guard picture.width > 0, picture.height > 0, picture.pixels.count >= picture.width * picture.height * 3 else {
            throw Failure(message: "cannot encode a \(picture.width)x\(picture.height) picture of \(picture.pixels.count) bytes")
        }
        var out = umdev_png_buffer()
        let ok = picture.pixels.withUnsafeBytes {
            umdev_png_encode_rgb($0.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(picture.width), Int32(picture.height),
                                 Int32(picture.width * 3), level, filter, strategy, &out)
        }
        guard ok != 0, let data = out.data else { throw Failure(message: "cannot encode: libpng failed or memory ran out") }
        defer { free(data) }
        return Array(UnsafeBufferPointer(start: data, count: out.size))
    }

    /// Reads a PNG file as 8-bit RGB (any PNG libpng reads is converted).
    public static func read(_ path: String) throws(Failure) -> RGBImage {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        guard png_image_begin_read_from_file(&image, path) != 0 else { throw Failure(message: "cannot read \(path): \(message(image))") }
        image.format = UInt32(PNG_FORMAT_RGB)
        let width = Int(image.width), height = Int(image.height)
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        let ok = pixels.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, Int32(width * 3), nil) }
        guard ok != 0 else { throw Failure(message: "cannot decode \(path): \(message(image))") }
        return RGBImage(width: width, height: height, pixels: pixels)
    }
}
