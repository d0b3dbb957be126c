import CShim
import Descriptors
import Foundation
import Glibc
import MBochs
import MDPY
import PCI
import Testing
import VFIOUser
import VFIOUserClient

/// The display devices over a real socket, driven the way QEMU and a guest
/// driver would drive them.
@Suite("display devices over the socket")
struct DisplayServerTests {
    /// Maps a region through the descriptor GET_REGION_INFO hands out, as QEMU does.
    final class Mapping {
        let base: UnsafeMutableRawPointer
        let size: Int
        let descriptor: SharedDescriptor
        var fd: Int32 { descriptor.rawValue }
        init(_ c: VFIOUserClient, region: Int) throws {
            let info = try c.regionInfo(UInt32(region))
            guard info.mappable, let descriptor = info.descriptor else { throw ClientError.malformed("region \(region) is not mappable") }
            let p = mmap(nil, Int(info.size), PROT_READ | PROT_WRITE, MAP_SHARED, info.fd, off_t(info.offset))
            guard let p, p != MAP_FAILED else { throw ClientError.system(errno, "mmap") }
            base = p; size = Int(info.size); self.descriptor = descriptor
        }
        deinit { munmap(base, size) }
        /// Bytes of the file with pages behind them.
        var committed: Int { var st = stat(); fstat(fd, &st); return Int(st.st_blocks) * 512 }
    }

    @Test("mbochs: a pattern written through the mapped BAR0 reads back with REGION_READ, and the reverse")
    func mappedVRAM() throws {
        let s = try LiveServer(try MBochs(type: .small), type: "mbochs-small")
        let c = try s.connect()
        let vram = try Mapping(c, region: MBochs.vramRegion)
        #expect(vram.size == 4 << 20)
        let at = 1 << 20 + 4096 * 3 + 12
        for i in 0..<64 { vram.base.storeBytes(of: UInt8(truncatingIfNeeded: i * 37 + 1), toByteOffset: at + i, as: UInt8.self) }
        let back = try c.read(region: UInt32(MBochs.vramRegion), offset: UInt64(at), count: 64)
        #expect(back == (0..<64).map { UInt8(truncatingIfNeeded: $0 * 37 + 1) })
        let pattern: [UInt8] = (0..<300).map { UInt8(truncatingIfNeeded: 255 - $0) }
        try c.write(region: UInt32(MBochs.vramRegion), offset: 3 << 20, bytes: pattern)
        #expect(Array(UnsafeRawBufferPointer(start: vram.base + (3 << 20), count: 300)) == pattern)
        // Past the end is refused and the connection lives on.
        #expect(throws: ClientError.remote(EINVAL)) { try c.read(region: UInt32(MBochs.vramRegion), offset: (4 << 20) - 2, count: 4) }
        expectAlive(c)
    }

    @Test("mbochs: the EDID region has its TYPE capability; its rules come back as errnos")
    func edidRegionOverSocket() throws {
        let s = try LiveServer(try MBochs(type: .medium), type: "mbochs-medium")
        let c = try s.connect()
        let first = try c.regionInfoOnce(UInt32(MBochs.edidRegion), argsz: 32)
        #expect(first.argsz == 48 && first.size == 4096 && first.flags & VFIO.regionFlagCaps == 0)
        let info = try c.regionInfo(UInt32(MBochs.edidRegion))
        #expect(info.type?.type == 1 && info.type?.subtype == 1)
        #expect(info.readable && info.writable && !info.mappable && info.fd < 0)
        let r = UInt32(MBochs.edidRegion)
        #expect(try c.read32(region: r, offset: 0) == 0x800)
        #expect(try c.read32(region: r, offset: 4) == 0x400)
        #expect(try c.read32(region: r, offset: 12) == 1920 && c.read32(region: r, offset: 16) == 1440)
        #expect(throws: ClientError.remote(EPERM)) { try c.write32(region: r, offset: 12, 640) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.read(region: r, offset: 8, count: 2) }
        #expect(throws: ClientError.remote(EBUSY)) { try c.write(region: r, offset: 0x800, bytes: [0]) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.write32(region: r, offset: 20, 7) }
        expectAlive(c)
        // link down → new blob → link up: the guest's BAR2 0x000 changes.
        let bar2 = UInt32(MBochs.mmioRegion)
        let before = try c.read(region: bar2, offset: 0, count: 128)
        try c.write32(region: r, offset: 20, EDIDRegion.Link.down)
        #expect(try c.read(region: bar2, offset: 0, count: 8) == [UInt8](repeating: 0xff, count: 8))
        let blob = EDID.generate(preferred: EDID.Mode(1280, 1024), name: "swapped")
        try c.write(region: r, offset: 0x800, bytes: blob)
        try c.write32(region: r, offset: 8, 128)
        try c.write32(region: r, offset: 20, EDIDRegion.Link.up)
        let after = try c.read(region: bar2, offset: 0, count: 128)
        #expect(after == blob && after != before)
    }

    @Test("mbochs: DEVICE_RESET over the socket disables the plane and keeps VRAM")
    func mbochsReset() throws {
        let device = try MBochs(type: .large)
        let s = try LiveServer(device, type: "mbochs-large")
        let c = try s.connect()
        let bar2 = UInt32(MBochs.mmioRegion)
        for w in DispiRegisters.modeSet(width: 640, height: 480, vramSize: device.type.vramSize) {
            try c.write16(region: bar2, offset: w.offset, w.value)
        }
        let shown = device.planes.current()
        #expect(shown.width == 640 && shown.height == 480 && shown.isEnabled)
        try c.write(region: UInt32(MBochs.vramRegion), offset: 0, bytes: [7, 7, 7])
        #expect(try c.deviceInfo().supportsReset)
        try c.reset()
        #expect(!device.planes.current().isEnabled)
        #expect(try c.read16(region: bar2, offset: 0x502) == 0 && c.read16(region: bar2, offset: 0x500) == 0xb0c5)
        #expect(try c.read(region: UInt32(MBochs.vramRegion), offset: 0, count: 3) == [7, 7, 7])
    }

    @Test("mdpy: config and the display region over the socket; the gradient through the mapping; reset repaints")
    func mdpyOverSocket() throws {
        let s = try LiveServer(try MDPY(type: .vga), type: "mdpy-vga")
        let c = try s.connect()
        let info = try c.deviceInfo()
        #expect(info.regionCount == 10 && info.irqCount == 5 && info.supportsReset)
        let cfg = try c.read(region: UInt32(RegionIndex.config), offset: 0x40, count: 16)
        #expect(cfg == [0x09, 0, 0x10, 0, 0x58, 0x52, 0x32, 0x34, 0x80, 0x02, 0, 0, 0xe0, 0x01, 0, 0])
        let display = try c.regionInfo(UInt32(MDPY.displayRegion))
        #expect(display.type?.type == 0x8000_1b36 && display.type?.subtype == 1 && display.mappable && display.size == 2 << 20)
        let fb = try Mapping(c, region: MDPY.displayRegion)
        let row240 = UnsafeRawBufferPointer(start: fb.base + 240 * 2560, count: 2560)
        #expect(row240.allSatisfy { $0 == UInt8(240 * 255 / 480) })
        // The guest draws through BAR0; trapped reads at an offset see it.
        let bar0 = try Mapping(c, region: RegionIndex.bar0)
        bar0.base.storeBytes(of: UInt32(0x00ff_0000).littleEndian, toByteOffset: 100 * 2560 + 40, as: UInt32.self)
        #expect(try c.read32(region: 0, offset: 100 * 2560 + 40) == 0x00ff_0000)
        #expect(try c.read32(region: UInt32(MDPY.displayRegion), offset: 100 * 2560 + 40) == 0x00ff_0000)
        try c.reset()
        // Reset repaints row 100 with 100·255/480 = 53 (0x35) in every byte.
        #expect(fb.base.load(fromByteOffset: 100 * 2560 + 40, as: UInt32.self) == 0x3535_3535)
    }

    /// VmRSS and RssShmem of a process, in KiB.
    static func rss(_ pid: pid_t) -> (total: Int, shmem: Int) {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        func field(_ name: String) -> Int {
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return -1 }
            return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
        }
        return (field("VmRSS"), field("RssShmem"))
    }

    @Test("VRAM is sparse: an idle mbochs-large adds < 4 MiB RSS; touching N pages adds about N pages")
    func sparseVRAM() throws {
        // The same binary serving mtty-1 is the baseline, after one client session each.
        let baseline = try ServerProcess(type: "mtty-1")
        let mbochs = try ServerProcess(type: "mbochs-large")
        for server in [baseline, mbochs] {
            let c = try VFIOUserClient(path: server.path)
            try c.negotiate()
            for i in 0..<(try c.deviceInfo().regionCount) { _ = try c.regionInfo(i) }
            // Both are measured idle: each session over, its device released.
            #expect(leave(c), "\(server.path): the session did not end")
        }
        let idle = Self.rss(mbochs.pid), base = Self.rss(baseline.pid)
        #expect(idle.total > 0 && base.total > 0)
        #expect(idle.total - base.total < 4096, "mbochs-large \(idle.total) KiB, mtty-1 \(base.total) KiB")
        #expect(idle.shmem < 64, "RssShmem \(idle.shmem) KiB before any page is touched")

        let c = try VFIOUserClient(path: mbochs.path)
        try c.negotiate()
        let vram = try Mapping(c, region: MBochs.vramRegion)
        #expect(vram.size == 64 << 20)
        #expect(vram.committed == 0)
        // N pages touched by the device (trapped writes land in the server's mapping).
        let n = 256
        for page in 0..<n { try c.write(region: UInt32(MBochs.vramRegion), offset: UInt64(page * 2 * 4096), bytes: [1]) }
        let touched = Self.rss(mbochs.pid)
        let grownKiB = touched.shmem - idle.shmem
        #expect(grownKiB >= n * 4 && grownKiB <= n * 4 + 128, "RssShmem grew \(grownKiB) KiB for \(n) pages")
        #expect(vram.committed == n * 4096)
        // M pages touched by the client through its own mapping: committed in
        // the memfd, not in the server's RSS.
        let m = 512
        for page in 0..<m { vram.base.storeBytes(of: 2, toByteOffset: (32 << 20) + page * 4096, as: UInt8.self) }
        #expect(vram.committed == (n + m) * 4096)
        #expect(Self.rss(mbochs.pid).shmem - touched.shmem < 128)
    }
}
