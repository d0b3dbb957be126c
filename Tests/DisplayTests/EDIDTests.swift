import Glibc
import MBochs
import PCI
import Testing

@Suite("mbochs EDID")
struct EDIDTests {
    let region = MBochs.edidRegion
    typealias F = EDIDRegion.Field

    /// The blob the guest reads at BAR2 0x000, as bochs-drm reads it: one byte at a time.
    func guestEDID(_ d: MBochs, _ count: Int = 128) -> [UInt8] {
        (0..<count).map { UInt8(d.value(MBochs.mmioRegion, $0, 1)) }
    }

    @Test("power-on EDID: valid, prefers the type's maximum (1024x768 without one), lists nothing larger",
          arguments: MBochsType.all)
    func defaultBlob(type: MBochsType) throws {
        let d = try MBochs(type: type)
        #expect(d.value(region, F.linkState, 4) == 1)
        #expect(d.value(region, F.edidSize, 4) == 128)
        let blob = guestEDID(d)
        #expect(EDID.isValid(blob))
        #expect(Array(blob[0..<8]) == EDID.header)
        #expect(blob[18] == 1 && blob[19] == 4)
        let preferred = EDID.detailedModes(blob).first
        let want = type.maxWidth == 0 ? EDID.Mode(1024, 768) : EDID.Mode(Int(type.maxWidth), Int(type.maxHeight))
        #expect(preferred == want)
        let all = EDID.detailedModes(blob) + EDID.standardModes(blob) + EDID.establishedModes(blob)
        #expect(all.count >= 3)
        if type.maxWidth != 0 {
            #expect(all.allSatisfy { $0.width <= Int(type.maxWidth) && $0.height <= Int(type.maxHeight) })
        }
        // What the region holds at edid_offset is what the guest sees.
        #expect(d.bytes(region, EDIDRegion.blobOffset, 128).bytes == blob)
        // The range-limits descriptor (tag 0xFD) and the name are present.
        #expect(blob[75] == 0xfd && blob[93] == 0xfc)
        #expect(String(decoding: blob[95..<107], as: UTF8.self) == "umdev mbochs")
    }

    @Test("the region's read-only fields", arguments: MBochsType.all)
    func fields(type: MBochsType) throws {
        let d = try MBochs(type: type)
        #expect(d.value(region, F.edidOffset, 4) == 0x800)
        #expect(d.value(region, F.edidMaxSize, 4) == 0x400)
        #expect(d.value(region, F.maxXres, 4) == UInt64(type.maxWidth))
        #expect(d.value(region, F.maxYres, 4) == UInt64(type.maxHeight))
        for f in [F.edidOffset, F.edidMaxSize, F.maxXres, F.maxYres] {
            #expect(d.put(region, f, le32(1)) == EPERM)
        }
        #expect(d.value(region, F.edidOffset, 4) == 0x800)
    }

    @Test("link down, new blob, link up changes what BAR2 0x000 returns")
    func updateProtocol() throws {
        let d = try MBochs(type: .small)
        let old = guestEDID(d)
        #expect(d.put(region, F.linkState, le32(EDIDRegion.Link.down)) == 0)
        #expect(guestEDID(d, 8) == [UInt8](repeating: 0xff, count: 8))   // no monitor while down
        let blob = EDID.generate(preferred: EDID.Mode(640, 480), limit: EDID.Mode(640, 480), name: "replacement")
        #expect(d.put(region, EDIDRegion.blobOffset, blob) == 0)
        #expect(d.put(region, F.edidSize, le32(128)) == 0)
        #expect(guestEDID(d, 8) == [UInt8](repeating: 0xff, count: 8))
        #expect(d.put(region, F.linkState, le32(EDIDRegion.Link.up)) == 0)
        let now = guestEDID(d)
        #expect(now == blob && now != old)
        #expect(EDID.detailedModes(now).first == EDID.Mode(640, 480))
        // Past edid_size the guest reads an empty bus.
        #expect(d.value(MBochs.mmioRegion, 128, 1) == 0xff)
    }

    @Test("accesses outside the rules get an errno and change nothing")
    func rules() throws {
        let d = try MBochs(type: .medium)
        let before = d.edid
        #expect(d.bytes(region, F.edidSize, 2).errno == EINVAL)          // not 4 bytes
        #expect(d.bytes(region, F.edidSize + 1, 4).errno == EINVAL)      // unaligned
        #expect(d.bytes(region, 0x18, 4).errno == EINVAL)                // past the structure
        #expect(d.bytes(region, 0x7fc, 8).errno == EINVAL)               // straddles the blob's start
        #expect(d.bytes(region, 0xbfc, 8).errno == EINVAL)               // past the blob window
        #expect(d.bytes(region, 0xc00, 1).errno == EINVAL)
        #expect(d.put(region, F.linkState, le32(3)) == EINVAL)           // neither up nor down
        #expect(d.put(region, F.linkState, le32(0)) == EINVAL)
        // While the link is up, blob and size are the guest's: EBUSY.
        #expect(d.put(region, EDIDRegion.blobOffset, [0]) == EBUSY)
        #expect(d.put(region, F.edidSize, le32(256)) == EBUSY)
        #expect(d.edid == before)
        // Down: edid_size is bounded by edid_max_size.
        #expect(d.put(region, F.linkState, le32(EDIDRegion.Link.down)) == 0)
        #expect(d.put(region, F.edidSize, le32(0x401)) == EINVAL)
        #expect(d.put(region, F.edidSize, le32(0x400)) == 0)
        // A size that is not whole blocks, or a broken blob, cannot go up.
        #expect(d.put(region, F.edidSize, le32(100)) == 0)
        #expect(d.put(region, F.linkState, le32(EDIDRegion.Link.up)) == EINVAL)
        #expect(d.put(region, F.edidSize, le32(128)) == 0)
        let checksum = UInt8(d.value(region, EDIDRegion.blobOffset + 127, 1))
        #expect(d.put(region, EDIDRegion.blobOffset + 127, [checksum ^ 0xff]) == 0)
        #expect(d.put(region, F.linkState, le32(EDIDRegion.Link.up)) == EINVAL)
        #expect(d.value(region, F.linkState, 4) == UInt64(EDIDRegion.Link.down))
        #expect(d.put(region, EDIDRegion.blobOffset + 127, [checksum]) == 0)
        #expect(d.put(region, F.linkState, le32(EDIDRegion.Link.up)) == 0)
        #expect(EDID.isValid(d.edid.guestBlob))
    }

    @Test("generated timings: CVT reduced blanking at 60 Hz")
    func timings() {
        // 1920x1080 CVT-RB: 138.50 MHz, 2080 x 1111 total (VESA CVT 1.1 worked example figures).
        let t = EDID.Timing.cvtReducedBlanking(EDID.Mode(1920, 1080))
        #expect(t.pixelClockKHz == 138_500)
        #expect(t.horizontalTotal == 2080)
        #expect(t.height + t.verticalBlank == 1111)
        let dtd = t.detailedDescriptor(imageSize: (508, 286))
        #expect(dtd.count == 18 && dtd[0] == 0x1a && dtd[1] == 0x36)   // 13850 in 10 kHz units
        #expect(dtd[17] == 0x1a)
    }
}
