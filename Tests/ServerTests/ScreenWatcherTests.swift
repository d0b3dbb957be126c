import Glibc
import MBochs
import MDPY
import Testing
import VFIOUser
import VFIOUserClient
import Viewer

@Suite("ScreenWatcher")
struct ScreenWatcherTests {
    @Test("reports the whole screen first, then only the tiles that changed")
    func tiles() throws {
        let s = try LiveServer(try MBochs(type: .medium), type: "mbochs-medium")
        let d = try LiveDisplay(s)
        let vmm = try s.connect()
        let watcher = ScreenWatcher(mapping: try PlaneMapping(client: try d.connect()))
        #expect(try watcher.poll().frame == nil)
        try setBochsMode(vmm, width: 1024, height: 768)
        let bar0 = try DisplayServerTests.Mapping(vmm, region: 0)
        TestPattern.drawXRGB(into: bar0.base, width: 1024, height: 768, stride: 4096, seed: 1)
        let first = try watcher.poll()
        #expect(first.layoutChanged && first.changed.count == 16 * 12)
        #expect(first.storage == nil && first.stride == 4096)   // the plane itself, no copy
        #expect(try watcher.poll().changed.isEmpty)
        // One pixel in tile (3, 2), and a line across tiles (0..15, 9).
        bar0.base.storeBytes(of: UInt32(0x123456), toByteOffset: (2 * 64 + 5) * 4096 + (3 * 64 + 7) * 4, as: UInt32.self)
        let one = try watcher.poll()
        #expect(!one.layoutChanged && one.changed == [Tile(x: 192, y: 128, width: 64, height: 64)])
        for x in 0..<1024 { bar0.base.storeBytes(of: UInt32(0xffffff), toByteOffset: (9 * 64 + 1) * 4096 + x * 4, as: UInt32.self) }
        let line = try watcher.poll()
        #expect(line.changed.count == 16 && line.changed.allSatisfy { $0.y == 9 * 64 })
        // A flip to a copy of the same picture: moved, nothing changed.
        bar0.base.advanced(by: 768 * 4096).copyMemory(from: bar0.base, byteCount: 768 * 4096)
        try vmm.write16(region: 2, offset: 0x512, 768)
        let flipped = try watcher.poll()
        #expect(flipped.moved && !flipped.layoutChanged && flipped.changed.isEmpty)
        // A mode change starts over.
        try setBochsMode(vmm, width: 800, height: 600)
        let mode = try watcher.poll()
        #expect(mode.layoutChanged && mode.width == 800 && mode.changed.count == 13 * 10)
        #expect(mode.changed.last == Tile(x: 768, y: 576, width: 32, height: 24))
        // Disabled.
        try vmm.write16(region: UInt32(MBochs.mmioRegion), offset: DispiRegisters.disable.offset, DispiRegisters.disable.value)
        let off = try watcher.poll()
        #expect(off.frame == nil && off.layoutChanged)
    }

    @Test("other formats are converted to XRGB8888 into a buffer the update holds")
    func converted() throws {
        let s = try LiveServer(try MBochs(type: .small), type: "mbochs-small")
        let d = try LiveDisplay(s)
        let vmm = try s.connect()
        try setBochsMode(vmm, width: 640, height: 480, vram: 4 << 20)
        try vmm.write16(region: 2, offset: 0x506, 16)                 // RGB565
        let bar0 = try DisplayServerTests.Mapping(vmm, region: 0)
        bar0.base.storeBytes(of: UInt16(0xf800), toByteOffset: 0, as: UInt16.self)
        bar0.base.storeBytes(of: UInt16(0x07e0), toByteOffset: 2, as: UInt16.self)
        let watcher = ScreenWatcher(mapping: try PlaneMapping(client: try d.connect()))
        let u = try watcher.poll()
        #expect(u.frame?.fourcc == DRMFormat.rgb565 && u.storage != nil && u.stride == 640 * 4)
        #expect(u.pixels?.load(as: UInt32.self) == 0xff0000 && u.pixels?.load(fromByteOffset: 4, as: UInt32.self) == 0x00ff00)
        bar0.base.storeBytes(of: UInt16(0x001f), toByteOffset: 0, as: UInt16.self)
        let again = try watcher.poll()
        #expect(again.changed == [Tile(x: 0, y: 0, width: 64, height: 64)])
        #expect(again.pixels?.load(as: UInt32.self) == 0x0000ff)
    }
}
