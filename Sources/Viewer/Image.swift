import VFIOUserClient
import VFIOUser

/// A picture as 8-bit RGB triples, row after row with no padding: what a
/// PNG holds and what the viewers send.
public struct RGBImage: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3)
        self.width = width; self.height = height; self.pixels = pixels
    }

    /// The pixel at (x, y) as 0xRRGGBB.
    public func rgb(_ x: Int, _ y: Int) -> UInt32 {
        let i = (y * width + x) * 3
        return UInt32(pixels[i]) << 16 | UInt32(pixels[i + 1]) << 8 | UInt32(pixels[i + 2])
    }
}

/// Conversion from the plane formats umdev's devices produce.
public enum PixelFormat {
    /// Whether `fourcc` can be converted: every format DRMFormat names.
    public static func isSupported(_ fourcc: UInt32) -> Bool { DRMFormat.bytesPerPixel(fourcc) != nil }

    /// The frame's visible pixels as RGB; nil for an unsupported format.
    public static func rgb(_ frame: PlaneMapping.Frame) -> RGBImage? {
        rgb(pixels: frame.pixels, fourcc: frame.fourcc, width: frame.width, height: frame.height, stride: frame.stride)
    }

    /// The frame converted to XRGB8888 (width × 4 bytes per line) at `destination`.
    public static func xrgb(_ frame: PlaneMapping.Frame, into destination: UnsafeMutableRawPointer) {
        for y in 0..<frame.height {
            let line = frame.pixels + y * frame.stride
            let out = destination + y * frame.width * 4
            for x in 0..<frame.width {
                let rgb: UInt32
                switch frame.fourcc {
                case DRMFormat.bgrx8888:
                    let p = line + 4 * x
                    rgb = UInt32(p.load(fromByteOffset: 1, as: UInt8.self)) << 16
                        | UInt32(p.load(fromByteOffset: 2, as: UInt8.self)) << 8 | UInt32(p.load(fromByteOffset: 3, as: UInt8.self))
                case DRMFormat.rgb565:
                    let v = UInt16(littleEndian: (line + 2 * x).loadUnaligned(as: UInt16.self))
                    let r = UInt32(v >> 11), g = UInt32(v >> 5 & 0x3f), b = UInt32(v & 0x1f)
                    rgb = (r << 3 | r >> 2) << 16 | (g << 2 | g >> 4) << 8 | (b << 3 | b >> 2)
                default:
                    rgb = (line + 4 * x).loadUnaligned(as: UInt32.self) & 0xff_ffff
                }
                out.storeBytes(of: rgb.littleEndian, toByteOffset: 4 * x, as: UInt32.self)
            }
        }
    }

    /// `width`×`height` pixels of `fourcc` at `pixels`, lines `stride` bytes apart.
    public static func rgb(pixels: UnsafeRawPointer, fourcc: UInt32, width: Int, height: Int, stride: Int) -> RGBImage? {
        guard isSupported(fourcc), width > 0, height > 0 else { return nil }
        var out = [UInt8](repeating: 0, count: width * height * 3)
        out.withUnsafeMutableBufferPointer { dst in
            for y in 0..<height {
                let line = pixels + y * stride
                var o = y * width * 3
                switch fourcc {
                case DRMFormat.xrgb8888:
                    // Little-endian x:R:G:B: memory holds B, G, R, x.
                    for x in 0..<width {
                        let p = line + 4 * x
                        dst[o] = p.load(fromByteOffset: 2, as: UInt8.self)
                        dst[o + 1] = p.load(fromByteOffset: 1, as: UInt8.self)
                        dst[o + 2] = p.load(as: UInt8.self)
                        o += 3
                    }
                case DRMFormat.bgrx8888:
                    // Little-endian B:G:R:x: memory holds x, R, G, B.
                    for x in 0..<width {
                        let p = line + 4 * x
                        dst[o] = p.load(fromByteOffset: 1, as: UInt8.self)
                        dst[o + 1] = p.load(fromByteOffset: 2, as: UInt8.self)
                        dst[o + 2] = p.load(fromByteOffset: 3, as: UInt8.self)
                        o += 3
                    }
                default:
                    // Little-endian R:G:B 5:6:5, widened by repeating the top bits.
                    for x in 0..<width {
                        let v = UInt16(littleEndian: (line + 2 * x).loadUnaligned(as: UInt16.self))
                        let r = UInt8(v >> 11), g = UInt8(v >> 5 & 0x3f), b = UInt8(v & 0x1f)
                        dst[o] = r << 3 | r >> 2
                        dst[o + 1] = g << 2 | g >> 4
                        dst[o + 2] = b << 3 | b >> 2
                        o += 3
                    }
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: out)
    }
}
