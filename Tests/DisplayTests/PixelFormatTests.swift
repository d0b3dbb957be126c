import Glibc
import Testing
import VFIOUser
import Viewer

@Suite("pixel conversion and PNG")
struct PixelFormatTests {
    func convert(_ bytes: [UInt8], fourcc: UInt32, width: Int, height: Int = 1, stride: Int) -> RGBImage? {
        bytes.withUnsafeBytes { PixelFormat.rgb(pixels: $0.baseAddress!, fourcc: fourcc, width: width, height: height, stride: stride) }
    }

    @Test("XRGB8888: memory holds B, G, R, x")
    func xrgb() {
        let img = convert([0x33, 0x22, 0x11, 0xff, 0x00, 0x80, 0xff, 0x00], fourcc: DRMFormat.xrgb8888, width: 2, stride: 8)
        #expect(img?.pixels == [0x11, 0x22, 0x33, 0xff, 0x80, 0x00])
    }

    @Test("BGRX8888: memory holds x, R, G, B")
    func bgrx() {
        let img = convert([0xff, 0x11, 0x22, 0x33], fourcc: DRMFormat.bgrx8888, width: 1, stride: 4)
        #expect(img?.rgb(0, 0) == 0x112233)
    }

    @Test("RGB565: fields widened by repeating their top bits")
    func rgb565() {
        let words: [UInt16] = [0xf800, 0x07e0, 0x001f, 0x8410, 0xffff, 0x0000]
        let bytes = words.flatMap { [UInt8($0 & 0xff), UInt8($0 >> 8)] }
        let img = convert(bytes, fourcc: DRMFormat.rgb565, width: 6, stride: 12)
        #expect((0..<6).map { img?.rgb($0, 0) } == [0xff0000, 0x00ff00, 0x0000ff, 0x848284, 0xffffff, 0x000000])
    }

    @Test("stride is honoured and padding ignored; unknown formats are refused")
    func strideAndUnknown() {
        let bytes: [UInt8] = [1, 2, 3, 0, 9, 9, 9, 9, 4, 5, 6, 0, 9, 9, 9, 9]
        let img = convert(bytes, fourcc: DRMFormat.xrgb8888, width: 1, height: 2, stride: 8)
        #expect(img?.pixels == [3, 2, 1, 6, 5, 4])
        #expect(convert(bytes, fourcc: 0x3432_4241, width: 1, height: 2, stride: 8) == nil)   // 'AB24'
    }

    @Test("a PNG written and read back is the same picture")
    func pngRoundTrip() throws {
        let picture = TestPattern.image(width: 97, height: 53, seed: 200)
        let path = "/tmp/umdev-png-\(getpid()).png"
        defer { unlink(path) }
        try PNG.write(picture, to: path)
        #expect(try PNG.read(path) == picture)
        let encoded = try PNG.encode(picture)
        #expect(Array(encoded[0..<8]) == [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
        #expect(throws: PNG.Failure.self) { try PNG.read("/tmp/umdev-no-such.png") }
    }
}
