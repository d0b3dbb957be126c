import CPNG
import Glibc

/// PNG files through libpng's simplified API.
public enum PNG {
    /// A libpng failure, with its message.
    public struct Failure: Error, CustomStringConvertible {
        public let message: String
        public var description: String { "PNG: \(message)" }
    }

    private static func image(width: Int, height: Int) -> png_image {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = UInt32(PNG_FORMAT_RGB)
        return image
    }

    private static func message(_ image: png_image) -> String {
        withUnsafeBytes(of: image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Writes `picture` to `path` (replacing it), 8-bit RGB.
    public static func write(_ picture: RGBImage, to path: String) throws(Failure) {
        var image = image(width: picture.width, height: picture.height)
        let ok = picture.pixels.withUnsafeBytes {
            png_image_write_to_file(&image, path, 0, $0.baseAddress, Int32(picture.width * 3), nil)
        }
        guard ok != 0 else { throw Failure(message: "cannot write \(path): \(message(image))") }
    }

    /// The PNG encoding of `picture`, in memory.
    public static func encode(_ picture: RGBImage) throws(Failure) -> [UInt8] {
        var image = image(width: picture.width, height: picture.height)
        var size = 0
        // First pass sizes the output, second writes it.
        var ok = picture.pixels.withUnsafeBytes {
            png_image_write_to_memory(&image, nil, &size, 0, $0.baseAddress, Int32(picture.width * 3), nil)
        }
        guard ok != 0 else { throw Failure(message: "cannot encode: \(message(image))") }
        var out = [UInt8](repeating: 0, count: size)
        ok = picture.pixels.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { png_image_write_to_memory(&image, $0.baseAddress, &size, 0, src.baseAddress, Int32(picture.width * 3), nil) }
        }
        guard ok != 0 else { throw Failure(message: "cannot encode: \(message(image))") }
        return Array(out[0..<size])
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
