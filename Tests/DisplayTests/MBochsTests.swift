import Glibc
import MBochs
import PCI
import Testing

/// What bochs-drm's bochs_hw_setmode() writes, in its order.
func setMode(_ d: MBochs, width: UInt16, height: UInt16) {
    for w in DispiRegisters.modeSet(width: Int(width), height: Int(height), vramSize: d.type.vramSize) {
        d.put(MBochs.mmioRegion, Int(w.offset), width: 2, UInt64(w.value))
    }
}

/// What bochs_hw_setbase() writes for a buffer at VRAM `offset` with `pitch`.
func setBase(_ d: MBochs, pitch: Int, offset: Int) {
    let writes = [DispiRegisters.Write(DispiRegisters.Index.virtWidth, UInt16(pitch / 4))]
        + DispiRegisters.pan(x: offset % pitch / 4, y: offset / pitch)
    for w in writes { d.put(MBochs.mmioRegion, Int(w.offset), width: 2, UInt64(w.value)) }
}

@Suite("mbochs device model")
struct MBochsTests {
    let bar2 = MBochs.mmioRegion

    @Test("config space is the sample's", arguments: MBochsType.all)
    func configSpace(type: MBochsType) throws {
        let d = try MBochs(type: type)
        let cfg = RegionIndex.config
        #expect(d.value(cfg, 0x00, 4) == 0x1111_1234)
        #expect(d.value(cfg, 0x04, 4) == 0x0000_0003)     // COMMAND I/O+memory, STATUS 0 (no capabilities)
        #expect(d.value(cfg, 0x08, 4) == 0x0380_0001)     // class 038000, revision 1
        #expect(d.value(cfg, 0x10, 4) == 0x8)             // BAR0: 32-bit prefetchable memory
        #expect(d.value(cfg, 0x18, 4) == 0x0)             // BAR2: 32-bit memory
        #expect(d.value(cfg, 0x2c, 4) == 0x1100_1af4)
        #expect(d.value(cfg, 0x34, 1) == 0 && d.value(cfg, 0x3d, 1) == 0)
        d.put(cfg, 0x10, width: 4, 0xffff_ffff)
        d.put(cfg, 0x18, width: 4, 0xffff_ffff)
        #expect(d.value(cfg, 0x10, 4) == (0xffff_ffff & ~(type.vramSize - 1)) | 0x8)
        #expect(d.value(cfg, 0x18, 4) == 0xffff_f000)
    }

    @Test("regions: VRAM mappable, BAR2 trapped, EDID typed GFX/EDID; only the ERR and REQ IRQ indices", arguments: MBochsType.all)
    func regions(type: MBochsType) throws {
        let d = try MBochs(type: type)
        #expect(d.regions.count == 10)
        #expect(d.regions[0].size == type.vramSize && d.regions[0].mapping?.fd == d.vram.fd)
        #expect(d.regions[2].size == 4096 && d.regions[2].mapping == nil)
        #expect(d.regions[7].size == 256)
        #expect(d.regions[9].size == 4096 && d.regions[9].type?.type == 1 && d.regions[9].type?.subtype == 1)
        for i in [1, 3, 4, 5, 6, 8] { #expect(d.regions[i].size == 0) }
        #expect(d.irqs.map(\.count) == [0, 0, 0, 1, 1])
        #expect(d.supportsReset)
    }

    @Test("DISPI: ID and VIDEO_MEMORY_64K are fixed facts; the rest store what is written", arguments: MBochsType.all)
    func dispiRegisters(type: MBochsType) throws {
        let d = try MBochs(type: type)
        #expect(d.value(bar2, 0x500, 2) == 0xb0c5)
        #expect(d.value(bar2, 0x514, 2) == type.vramSize / 65536)   // 64, 256, 1024
        d.put(bar2, 0x500, width: 2, 0xb0c0)
        d.put(bar2, 0x514, width: 2, 1)
        #expect(d.value(bar2, 0x500, 2) == 0xb0c5)
        #expect(d.value(bar2, 0x514, 2) == type.vramSize / 65536)
        for (i, offset) in stride(from: 0x502, through: 0x512, by: 2).enumerated() {
            d.put(bar2, offset, width: 2, UInt64(0x1000 + i))
            #expect(d.value(bar2, offset, 2) == UInt64(0x1000 + i))
        }
    }

    @Test("DISPI byte and dword accesses use the registers' byte lanes")
    func dispiWidths() throws {
        let d = try MBochs(type: .small)
        d.put(bar2, 0x502, width: 4, 0x0258_0320)            // XRES 800, YRES 600 in one dword
        #expect(d.value(bar2, 0x502, 2) == 800 && d.value(bar2, 0x504, 2) == 600)
        d.put(bar2, 0x503, [0x04])                            // high byte of XRES
        #expect(d.value(bar2, 0x502, 2) == 0x0420)
        #expect(d.value(bar2, 0x502, 1) == 0x20 && d.value(bar2, 0x503, 1) == 0x04)
        #expect(d.value(bar2, 0x500, 4) == 0x0420_b0c5)
    }

    @Test("QEMU's extended registers: size 8, byte order little-endian until told otherwise")
    func extendedRegisters() throws {
        let d = try MBochs(type: .medium)
        #expect(d.value(bar2, 0x600, 4) == 8)
        #expect(d.value(bar2, 0x604, 4) == 0x1e1e_1e1e)
        d.put(bar2, 0x604, width: 4, 0x1234_5678)              // neither magic value: ignored
        #expect(d.value(bar2, 0x604, 4) == 0x1e1e_1e1e)
        setMode(d, width: 1024, height: 768)
        #expect(d.planes.current().fourcc == DRMFormat.xrgb8888)
        d.put(bar2, 0x604, width: 4, 0xbebe_bebe)
        #expect(d.value(bar2, 0x604, 4) == 0xbebe_bebe)
        #expect(d.planes.current().fourcc == DRMFormat.bgrx8888)
        // Narrower accesses are not register accesses: they read 0 and change nothing.
        #expect(d.value(bar2, 0x604, 2) == 0)
        d.put(bar2, 0x604, width: 2, 0x1e1e)
        #expect(d.value(bar2, 0x604, 4) == 0xbebe_bebe)
        d.reset()
        #expect(d.value(bar2, 0x604, 4) == 0x1e1e_1e1e)
    }

    @Test("holes, the VGA window and the EDID area past the blob read all-ones; writes there change nothing")
    func holes() throws {
        let d = try MBochs(type: .small)
        for offset in [0x080, 0x3ff, 0x400, 0x41a, 0x4ff, 0x516, 0x5ff, 0x608, 0xfff] {
            #expect(d.value(bar2, offset, 1) == 0xff, "offset \(offset)")
        }
        #expect(d.value(bar2, 0x800, 4) == 0xffff_ffff)
        let before = d.bytes(bar2, 0, 4096).bytes
        d.put(bar2, 0x402, [0x01])
        d.put(bar2, 0x000, [0x12, 0x34])
        d.put(bar2, 0x900, width: 4, 0xdead_beef)
        #expect(d.bytes(bar2, 0, 4096).bytes == before)
    }

    @Test("the plane follows bochs-drm's mode set: size, stride, format, offset", arguments: MBochsType.all)
    func planeAfterModeSet(type: MBochsType) throws {
        let d = try MBochs(type: type)
        #expect(!d.planes.current().isEnabled)
        setMode(d, width: 800, height: 600)
        let p = d.planes.current()
        #expect(p.kind == .dmabuf && p.fourcc == DRMFormat.xrgb8888)
        #expect(p.width == 800 && p.height == 600 && p.stride == 3200 && p.size == 3200 * 600)
        #expect(p.region == 0 && p.offset == 0 && p.id != 0)
        #expect(p == d.plane)
        // A buffer further into VRAM, as fbdev and KMS place them.
        setBase(d, pitch: 3200, offset: 3200)
        #expect(d.planes.current().offset == 3200)
    }

    @Test("plane id: same on a repeated identical mode set, new on a mode change and on a pan, old again on return")
    func planeIDs() throws {
        let d = try MBochs(type: .medium)
        setMode(d, width: 1024, height: 768)
        let a = d.planes.current()
        let generation = d.planes.generation
        setMode(d, width: 1024, height: 768)
        #expect(d.planes.current() == a)
        // The driver turns ENABLE off and on again in between, so the
        // published value dipped to disabled and came back with the same id.
        #expect(d.planes.generation == generation + 2)
        setMode(d, width: 800, height: 600)
        let b = d.planes.current()
        #expect(b.id != a.id && b.width == 800)
        setBase(d, pitch: 3200, offset: 3200 * 600)           // flip to a second buffer
        let c = d.planes.current()
        #expect(c.id != b.id && c.offset == 3200 * 600)
        setBase(d, pitch: 3200, offset: 0)                    // and back
        #expect(d.planes.current() == b)
        setBase(d, pitch: 3200, offset: 3200 * 600)
        #expect(d.planes.current() == c)
        // Writes that do not change the layout publish nothing.
        let g = d.planes.generation
        setBase(d, pitch: 3200, offset: 3200 * 600)
        d.put(bar2, 0x50a, width: 2, 7)                       // BANK
        d.put(bar2, 0x604, width: 4, 0x1e1e_1e1e)
        #expect(d.planes.generation == g)
        #expect(d.planes.recent(id: b.id) == b && d.planes.recent(id: c.id) == c && d.planes.recent(id: 9999) == nil)
    }

    @Test("plane ids stay bounded: old layouts are forgotten, ids never collide")
    func planeIDsBounded() throws {
        let d = try MBochs(type: .large)
        setMode(d, width: 640, height: 480)
        var ids: [UInt32: UInt64] = [:]
        for line in 0..<200 {
            setBase(d, pitch: 2560, offset: line * 2560)
            let p = d.planes.current()
            #expect(ids[p.id] == nil || ids[p.id] == p.offset)
            ids[p.id] = p.offset
        }
        #expect(ids.count == 200)
        #expect(d.planes.recent(id: ids.first { $0.value == 0 }!.key) == nil)        // long forgotten
        #expect(d.planes.recent(id: d.planes.current().id) == d.planes.current())
    }

    @Test("invalid modes are a disabled plane, not an error")
    func disabledPlanes() throws {
        let d = try MBochs(type: .small)
        setMode(d, width: 800, height: 600)
        #expect(d.planes.current().isEnabled)
        d.put(bar2, 0x506, width: 2, 24)                      // BPP 24: no format
        #expect(d.planes.current() == .disabled(.dmabuf))
        d.put(bar2, 0x506, width: 2, 16)                      // 16 bpp is RGB565
        #expect(d.planes.current().fourcc == DRMFormat.rgb565 && d.planes.current().stride == 1600)
        d.put(bar2, 0x506, width: 2, 32)
        d.put(bar2, 0x502, width: 2, 63)                      // narrower than 64
        #expect(!d.planes.current().isEnabled)
        d.put(bar2, 0x502, width: 2, 1280)                    // 1280x600x4 = 3 MiB fits 4 MiB
        #expect(d.planes.current().isEnabled)
        d.put(bar2, 0x512, width: 2, 300)                     // panned past the end of VRAM
        #expect(!d.planes.current().isEnabled)
        d.put(bar2, 0x512, width: 2, 0)
        d.put(bar2, 0x508, width: 2, 0x40)                    // LFB without ENABLED
        #expect(!d.planes.current().isEnabled)
        #expect(d.planes.current().id == 0)
    }

    @Test("reset clears the registers, keeps VRAM and the EDID")
    func reset() throws {
        let d = try MBochs(type: .medium)
        setMode(d, width: 1024, height: 768)
        d.put(MBochs.vramRegion, 4096, [1, 2, 3])
        d.put(MBochs.edidRegion, EDIDRegion.Field.linkState, le32(EDIDRegion.Link.down))
        d.reset()
        for offset in stride(from: 0x502, through: 0x512, by: 2) { #expect(d.value(bar2, offset, 2) == 0) }
        #expect(d.value(bar2, 0x500, 2) == 0xb0c5 && d.value(bar2, 0x514, 2) == 256)
        #expect(!d.planes.current().isEnabled)
        #expect(d.bytes(MBochs.vramRegion, 4096, 3).bytes == [1, 2, 3])
        #expect(d.value(MBochs.edidRegion, EDIDRegion.Field.linkState, 4) == UInt64(EDIDRegion.Link.down))
    }

    @Test("trapped VRAM accesses honour the offset and hit the memory the client maps")
    func vramOffsets() throws {
        let d = try MBochs(type: .small)
        let at = 3 * 4096 + 17
        d.put(MBochs.vramRegion, at, [0xa1, 0xb2])
        #expect(d.vram.base.load(fromByteOffset: at, as: UInt8.self) == 0xa1)
        d.vram.base.storeBytes(of: 0x5a, toByteOffset: at + 2, as: UInt8.self)
        #expect(d.bytes(MBochs.vramRegion, at, 3).bytes == [0xa1, 0xb2, 0x5a])
        #expect(d.value(MBochs.vramRegion, 0, 4) == 0)
    }
}

@Suite("mbochs under random register traffic")
struct MBochsRandomTests {
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            var x = state
            x ^= x >> 33; x = x &* 0xff51afd7ed558ccd; x ^= x >> 33
            return x
        }
    }

    @Test("200,000 random in-range accesses: the plane stays inside VRAM or is disabled; ids map to one layout")
    func randomTraffic() throws {
        let d = try MBochs(type: .small)
        var rng = Generator(state: 0xb0c5)
        var layoutOf: [UInt32: DisplayPlane] = [:]
        // Mostly DISPI, so that real modes come and go; some everything else.
        for _ in 0..<200_000 {
            let region = [2, 2, 2, 2, 9, 7, 0][Int.random(in: 0..<7, using: &rng)]
            let size = d.regions[region].size
            let width = [1, 2, 2, 4, 8, 64][Int.random(in: 0..<6, using: &rng)]
            let offset: Int
            if region == 2 && Bool.random(using: &rng) {
                offset = 0x500 + 2 * Int.random(in: 0..<11, using: &rng)
            } else {
                offset = Int.random(in: 0..<(Int(size) - width + 1), using: &rng)
            }
            guard offset + width <= Int(size) else { continue }
            if Bool.random(using: &rng) {
                let small: [UInt64] = [0, 1, 16, 32, 0x41, 64, 480, 600, 640, 800, 1024, 0xffff]
                let value = Bool.random(using: &rng) ? small[Int.random(in: 0..<small.count, using: &rng)] : UInt64.random(in: 0...UInt64.max, using: &rng)
                d.put(region, offset, width: width, value)
            } else {
                _ = d.bytes(region, offset, width)
            }
            let p = d.planes.current()
            if p.isEnabled {
                #expect(p.offset + p.size <= d.type.vramSize && p.width >= 64 && p.height >= 64)
                #expect(UInt64(p.stride) * UInt64(p.height) == p.size)
                var layout = p; layout.id = 0
                if let known = layoutOf[p.id] { #expect(known == layout) }
                layoutOf[p.id] = layout
            } else {
                #expect(p == .disabled(.dmabuf))
            }
        }
        #expect(layoutOf.count > 1)   // the traffic really produced modes
    }
}
