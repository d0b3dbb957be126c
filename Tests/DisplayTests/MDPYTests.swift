import Glibc
import MDPY
import PCI
import Testing

@Suite("mdpy device model")
struct MDPYTests {
    @Test("config space is the sample's, with the capability mdpy-fb reads", arguments: MDPYType.all)
    func configSpace(type: MDPYType) throws {
        let d = try MDPY(type: type)
        let cfg = RegionIndex.config
        #expect(d.value(cfg, 0x00, 2) == 0x1b36)
        #expect(d.value(cfg, 0x02, 2) == 0x000f)
        #expect(d.value(cfg, 0x04, 2) == 0x0003)          // I/O + memory
        #expect(d.value(cfg, 0x06, 2) == 0x0010)          // capability list
        #expect(d.value(cfg, 0x08, 4) == 0x0380_0001)     // class 038000, revision 1
        #expect(d.value(cfg, 0x10, 4) == 0x8)             // 32-bit prefetchable memory
        #expect(d.value(cfg, 0x2c, 2) == 0x1af4)
        #expect(d.value(cfg, 0x2e, 2) == 0x1100)
        #expect(d.value(cfg, 0x34, 1) == 0x40)
        #expect(d.value(cfg, 0x3d, 1) == 0)               // no interrupt pin
        // Vendor capability: id 9, next 0, length 16; then the fields at fixed offsets.
        #expect(d.bytes(cfg, 0x40, 4).bytes == [0x09, 0x00, 0x10, 0x00])
        #expect(d.value(cfg, 0x44, 4) == 0x3432_5258)     // 'XR24'
        #expect(d.value(cfg, 0x48, 4) == UInt64(type.width))
        #expect(d.value(cfg, 0x4c, 4) == UInt64(type.height))
        // The fields are read-only.
        d.put(cfg, 0x48, width: 4, 0x1234)
        #expect(d.value(cfg, 0x48, 4) == UInt64(type.width))
    }

    @Test("BAR0 is the framebuffer rounded up to a power of two and sizes like a BAR", arguments: MDPYType.all)
    func bar0Sizing(type: MDPYType) throws {
        let d = try MDPY(type: type)
        // roundup_pow_of_two(width × height × 4): 1,228,800 → 2 MiB, 3,145,728 → 4 MiB,
        // 8,294,400 → 8 MiB (reference/mdpy.md's table says 16 MiB for hd; 2^23 already covers it).
        let expected: UInt64 = switch type.name {
        case "mdpy-vga": 2 << 20
        case "mdpy-xga": 4 << 20
        default: 8 << 20
        }
        #expect(type.framebufferSize == expected)
        #expect(d.regions[RegionIndex.bar0].size == expected)
        d.put(RegionIndex.config, 0x10, width: 4, 0xffff_ffff)
        #expect(d.value(RegionIndex.config, 0x10, 4) == (UInt64(UInt32.max) & ~(expected - 1)) | 0x8)
    }

    @Test("regions: BAR0 and the display region share one mappable memfd; num_regions 10")
    func regions() throws {
        let d = try MDPY(type: .xga)
        #expect(d.regions.count == 10)
        let bar0 = d.regions[RegionIndex.bar0], display = d.regions[MDPY.displayRegion]
        #expect(bar0.mapping?.fd == d.framebuffer.fd && display.mapping?.fd == d.framebuffer.fd)
        #expect(display.size == bar0.size)
        #expect(display.type?.type == 0x8000_1b36 && display.type?.subtype == 1)
        #expect(bar0.type == nil)
        for i in [1, 2, 3, 4, 5, 6, 8] { #expect(d.regions[i].size == 0) }
        #expect(d.irqs.map(\.count) == [0, 0, 0, 1, 1])   // ERR and REQ only
        #expect(d.supportsReset)
    }

    @Test("power-on picture is the sample's gray ramp", arguments: MDPYType.all)
    func gradient(type: MDPYType) throws {
        let d = try MDPY(type: type)
        for y in [0, 1, Int(type.height) / 2, Int(type.height) - 1] {
            let shade = UInt8(y * 255 / Int(type.height))
            let row = d.bytes(RegionIndex.bar0, y * Int(type.stride), Int(type.stride)).bytes
            #expect(row.allSatisfy { $0 == shade }, "row \(y)")
        }
        // The bottom row is the lightest: 254 for every type.
        #expect(d.value(RegionIndex.bar0, (Int(type.height) - 1) * Int(type.stride), 1) == 254)
    }

    @Test("trapped accesses honour the offset, in BAR0 and the display region alike")
    func offsetsHonoured() throws {
        let d = try MDPY(type: .vga)
        let at = 123 * 2560 + 44
        d.put(RegionIndex.bar0, at, [1, 2, 3, 4, 5])
        #expect(d.bytes(RegionIndex.bar0, at, 5).bytes == [1, 2, 3, 4, 5])
        #expect(d.bytes(MDPY.displayRegion, at, 5).bytes == [1, 2, 3, 4, 5])
        #expect(d.bytes(RegionIndex.bar0, 0, 4).bytes == [0, 0, 0, 0])   // the start is untouched
        d.put(MDPY.displayRegion, 8, [9, 9])
        #expect(d.bytes(RegionIndex.bar0, 8, 2).bytes == [9, 9])
        // And the memory the client maps is the same.
        #expect(d.framebuffer.base.load(fromByteOffset: at + 2, as: UInt8.self) == 3)
    }

    @Test("reset repaints the ramp and restores config space")
    func reset() throws {
        let d = try MDPY(type: .vga)
        d.put(RegionIndex.bar0, 0, [0xaa, 0xbb, 0xcc, 0xdd])
        d.put(RegionIndex.config, 0x04, width: 2, 0)
        d.put(RegionIndex.config, 0x10, width: 4, 0xfd00_0000)
        d.reset()
        #expect(d.value(RegionIndex.bar0, 0, 4) == 0)
        #expect(d.value(RegionIndex.config, 0x04, 2) == 0x0003)
        #expect(d.value(RegionIndex.config, 0x10, 4) == 0x8)
    }

    @Test("the plane: XRGB8888 at offset 0 of the display region, stride width×4", arguments: MDPYType.all)
    func plane(type: MDPYType) throws {
        let d = try MDPY(type: type)
        let p = d.planes.current()
        #expect(p.kind == .region)
        #expect(p.fourcc == DRMFormat.xrgb8888)
        #expect(p.width == type.width && p.height == type.height)
        #expect(p.stride == type.width * 4)
        #expect(p.size == UInt64(type.width * 4 * type.height))
        #expect(p.size % 4096 == 0)
        #expect(p.region == MDPY.displayRegion && p.offset == 0)
        #expect(p.id != 0 && d.planes.recent(id: p.id) == p && d.planes.recent(id: p.id + 1) == nil)
        // Guest drawing and reset leave the layout (and so the plane) alone.
        let generation = d.planes.generation
        d.put(RegionIndex.bar0, 0, [1, 2, 3, 4])
        d.reset()
        #expect(d.planes.generation == generation && d.planes.current() == p)
    }

    @Test("the other regions refuse accesses")
    func otherRegions() throws {
        let d = try MDPY(type: .vga)
        #expect(d.bytes(RegionIndex.bar2, 0, 1).errno == EINVAL)
        #expect(d.put(RegionIndex.rom, 0, [0]) == EINVAL)
    }
}
