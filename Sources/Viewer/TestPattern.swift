/// A picture that makes a wrong offset, stride, byte order or crop visible:
/// eight colour bars across the top quarter, then a field where red follows
/// x, green follows y and blue mixes both with `seed`. Every pixel is a
/// function of (x, y, seed), so a snapshot can be checked exactly.
public enum TestPattern {
    static let bars: [UInt32] = [0xffffff, 0xffff00, 0x00ffff, 0x00ff00, 0xff00ff, 0xff0000, 0x0000ff, 0x000000]

    /// The colour at (x, y) of a `width`×`height` pattern, as 0xRRGGBB.
    public static func rgb(x: Int, y: Int, width: Int, height: Int, seed: UInt8) -> UInt32 {
        if y < height / 4 { return bars[min(7, x * 8 / max(1, width))] }
        let r = UInt32(truncatingIfNeeded: x * 255 / max(1, width - 1))
        let g = UInt32(truncatingIfNeeded: y * 255 / max(1, height - 1))
        let b = UInt32((x ^ y) & 0xff) ^ UInt32(seed)
        return r << 16 | g << 8 | b
    }

    /// Draws the pattern as XRGB8888 (little-endian, x byte 0) at `base`,
    /// lines `stride` bytes apart.
    public static func drawXRGB(into base: UnsafeMutableRawPointer, width: Int, height: Int, stride: Int, seed: UInt8) {
        for y in 0..<height {
            let line = base + y * stride
            for x in 0..<width {
                line.storeBytes(of: rgb(x: x, y: y, width: width, height: height, seed: seed).littleEndian,
                                toByteOffset: 4 * x, as: UInt32.self)
            }
        }
    }

    /// The pattern as an RGB picture.
    public static func image(width: Int, height: Int, seed: UInt8) -> RGBImage {
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        var i = 0
        for y in 0..<height {
            for x in 0..<width {
                let c = rgb(x: x, y: y, width: width, height: height, seed: seed)
                pixels[i] = UInt8(c >> 16); pixels[i + 1] = UInt8(c >> 8 & 0xff); pixels[i + 2] = UInt8(c & 0xff)
                i += 3
            }
        }
        return RGBImage(width: width, height: height, pixels: pixels)
    }
}
