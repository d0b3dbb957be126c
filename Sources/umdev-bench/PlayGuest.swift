import ArgumentParser
import CommandSupport
import Glibc
import MBochs
import VFIOUser
import VFIOUserClient
import Viewer

struct PlayGuest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "play-guest",
        abstract: "Play a guest's part on a display device: set a mode, pan, draw a test pattern.",
        discussion: """
        Connects to a device socket as a VMM would and does what a guest driver does:
        on mbochs, bochs-drm's mode-set register writes for --mode (32 bpp), then a pan
        to --pan; on mdpy, nothing (its mode is fixed). Then it draws umdev's test
        pattern into the mapped framebuffer where the plane starts, prints one line
        ("ready: ...") and, with --hold, stays connected that many seconds. The device
        keeps the picture after it leaves. For demos and tests; see Samples/display-demo.sh.
        """)

    @Option(help: "Device socket of an mdpy or mbochs device.") var socket: String
    @Option(help: "mbochs mode, WIDTHxHEIGHT.") var mode = "1024x768"
    @Option(help: "mbochs pan, X,Y in pixels (X_OFFSET, Y_OFFSET).") var pan = "0,0"
    @Option(help: "Pattern seed (0-255).") var seed: UInt8 = 0x5a
    @Option(help: "Seconds to stay connected after drawing.") var hold: Double = 0

    func run() throws {
        let c = try VFIOUserClient(path: socket)
        try c.negotiate()
        let id = try c.read(region: UInt32(RegionIndex.config), offset: 0, count: 4)
        let vendor = UInt16(id[0]) | UInt16(id[1]) << 8, device = UInt16(id[2]) | UInt16(id[3]) << 8
        let width: Int, height: Int, offset: Int
        switch (vendor, device) {
        case (0x1234, 0x1111):
            (width, height, offset) = try setBochsMode(c)
        case (0x1b36, 0x000f):
            width = Int(try c.read32(region: UInt32(RegionIndex.config), offset: 0x48))
            height = Int(try c.read32(region: UInt32(RegionIndex.config), offset: 0x4c))
            offset = 0
        default:
            throw CommandFailure("\(socket) is not an mdpy or mbochs device (PCI \(String(vendor, radix: 16)):\(String(device, radix: 16)))")
        }
        let stride = width * 4
        let bar0 = try c.regionInfo(0)
        guard bar0.mappable, bar0.fd >= 0, UInt64(offset + stride * height) <= bar0.size else {
            throw CommandFailure("the framebuffer does not fit BAR0")
        }
        guard let p = mmap(nil, Int(bar0.size), PROT_READ | PROT_WRITE, MAP_SHARED, bar0.fd, off_t(bar0.offset)), p != MAP_FAILED else {
            throw CommandFailure("cannot map BAR0: \(String(cString: strerror(errno)))")
        }
        defer { munmap(p, Int(bar0.size)) }
        TestPattern.drawXRGB(into: p + offset, width: width, height: height, stride: stride, seed: seed)
        print("ready: \(width)x\(height) stride \(stride) offset 0x\(String(offset, radix: 16)) seed \(seed)")
        fflush(nil)
        if hold > 0 { usleep(UInt32(min(hold, 4000) * 1_000_000)) }
    }

    private func parsePair(_ s: String, _ separator: Character) throws -> (Int, Int) {
        let parts = s.split(separator: separator)
        guard parts.count == 2, let a = Int(parts[0]), let b = Int(parts[1]), a >= 0, b >= 0, a <= 0xffff, b <= 0xffff else {
            throw ValidationError("'\(s)' is not two numbers separated by '\(separator)'")
        }
        return (a, b)
    }

    /// bochs_hw_setmode() then bochs_hw_setbase(), as Linux's driver writes
    /// them; returns the plane's size and VRAM offset.
    private func setBochsMode(_ c: VFIOUserClient) throws -> (Int, Int, Int) {
        let (w, h) = try parsePair(mode, "x")
        let (x, y) = try parsePair(pan, ",")
        let vram = try c.regionInfo(0)
        let stride = w * 4
        guard w >= 64, h >= 64, stride > 0, UInt64((y + h) * stride + x * 4) <= vram.size else {
            throw ValidationError("mode \(mode) panned to \(pan) does not fit \(vram.size) bytes of VRAM")
        }
        for r in DispiRegisters.modeSet(width: w, height: h, vramSize: vram.size) + DispiRegisters.pan(x: x, y: y) {
            try c.write16(region: UInt32(MBochs.mmioRegion), offset: r.offset, r.value)
        }
        return (w, h, y * stride + x * 4)
    }
}
