import Foundation
import Glibc
import MBochs
import PCI
import Testing
import VFIOUser
import VFIOUserClient

/// Replays what Linux 6.1's stock `bochs` DRM driver (and, before it, the
/// bochs-display option ROM) did to QEMU's own bochs-display
/// (Tests/Fixtures/bochs-display), over a real socket, against mbochs-medium:
/// 16 MiB of VRAM like the recording, so VIDEO_MEMORY_64K matches too.
///
/// Every BAR2 access is replayed and every read must return what QEMU's
/// device returned. Where the sample's identity differs from bochs-display,
/// the accesses are not replayed: config space (revision 1 instead of 2, no
/// PCI Express capability, no option ROM). The extended registers at 0x600
/// are replayed even though a driver skips them at revision 1: the recording
/// shows them because QEMU's device is revision 2, and they answer the same.
@Suite("bochs-drm transcript replay")
struct BochsTranscriptTests {
    struct Access {
        var seq: String
        var write: Bool
        var region: String
        var offset: Int
        var size: Int
        var value: UInt64
        var line: String
    }

    static func load(_ name: String) throws -> [Access] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/bochs-display/\(name).trace.txt")
        var out: [Access] = []
        for line in try String(contentsOf: url, encoding: .utf8).split(separator: "\n") where line.first?.isNumber == true {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 7, f[3] != "cfg" else { continue }
            out.append(Access(seq: String(f[0]), write: f[2] == "W", region: String(f[3]),
                              offset: Int(f[4].dropFirst(2), radix: 16)!, size: Int(f[5])!,
                              value: UInt64(f[6].dropFirst(2), radix: 16)!, line: String(line)))
        }
        return out
    }

    /// The EDID QEMU's device presented, rebuilt from the bytes the guest read.
    static func recordedEDID(_ accesses: [Access]) -> [UInt8] {
        var blob = [UInt8](repeating: 0, count: 256)
        var seen = 0
        for a in accesses where a.region == "edid" && !a.write {
            blob[a.offset] = UInt8(a.value)
            seen = max(seen, a.offset + 1)
        }
        return Array(blob[0..<seen])
    }

    struct Result {
        var mismatches: [String] = []
        var accesses = 0
        /// The published plane after every write, in order.
        var planes: [DisplayPlane] = []
        var final = DisplayPlane.disabled(.dmabuf)
    }

    /// Connects as a VMM would, gives the device QEMU's EDID through the EDID
    /// region (or takes the link down, for `edid-off`), then replays.
    func replay(_ name: String) throws -> Result {
        let accesses = try Self.load(name)
        let device = try MBochs(type: .medium)
        let server = MemoryServer(device, type: "mbochs-medium")
        let c = try server.connect()
        let edidRegion = UInt32(MBochs.edidRegion)
        try c.write32(region: edidRegion, offset: UInt64(EDIDRegion.Field.linkState), EDIDRegion.Link.down)
        let blob = Self.recordedEDID(accesses)
        if !blob.isEmpty {
            try c.write(region: edidRegion, offset: UInt64(EDIDRegion.blobOffset), bytes: blob)
            try c.write32(region: edidRegion, offset: UInt64(EDIDRegion.Field.edidSize), UInt32(blob.count))
            try c.write32(region: edidRegion, offset: UInt64(EDIDRegion.Field.linkState), EDIDRegion.Link.up)
        }
        var result = Result()
        for a in accesses {
            result.accesses += 1
            if a.write {
                let bytes = (0..<a.size).map { UInt8(truncatingIfNeeded: a.value >> (8 * UInt64($0))) }
                try c.write(region: UInt32(MBochs.mmioRegion), offset: UInt64(a.offset), bytes: bytes)
                result.planes.append(device.planes.current())
            } else {
                let got = try c.read(region: UInt32(MBochs.mmioRegion), offset: UInt64(a.offset), count: a.size)
                let value = got.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
                if value != a.value { result.mismatches.append("\(a.line)  -> got 0x\(String(value, radix: 16))") }
            }
        }
        result.final = device.planes.current()
        return result
    }

    /// id ↔ layout over a whole replay: no id stands for two layouts, and
    /// (with fewer layouts than the device remembers) no layout gets two ids.
    static func idsAreOneToOne(_ planes: [DisplayPlane]) -> Bool {
        var layoutOf: [UInt32: DisplayPlane] = [:]
        var idsOf: [String: Set<UInt32>] = [:]
        for p in planes where p.isEnabled {
            var layout = p
            layout.id = 0
            if let known = layoutOf[p.id], known != layout { return false }
            layoutOf[p.id] = layout
            idsOf["\(layout)", default: []].insert(p.id)
        }
        return idsOf.values.allSatisfy { $0.count == 1 }
    }

    static let scenarios: [(name: String, width: UInt32, height: UInt32)] = [
        ("boot", 1280, 800), ("boot-norom", 1280, 800), ("draw", 1280, 800), ("edid-800x600", 800, 600),
        ("edid-off", 1024, 768), ("rebind", 1280, 800), ("modeset", 1280, 800),
    ]

    @Test("every BAR2 read answers what QEMU's bochs-display answered", arguments: scenarios)
    func replayMatches(scenario: (name: String, width: UInt32, height: UInt32)) throws {
        let r = try replay(scenario.name)
        #expect(r.accesses > 250)   // the fixture loaded: firmware and driver make hundreds of BAR2 accesses in each
        #expect(r.mismatches.isEmpty, "\(r.mismatches.count) reads differ, first: \(r.mismatches.prefix(5).joined(separator: "\n"))")
        // Afterwards the plane is the driver's final mode, at the start of VRAM.
        let p = r.final
        #expect(p.fourcc == DRMFormat.xrgb8888)
        #expect(p.width == scenario.width && p.height == scenario.height)
        #expect(p.stride == 4 * scenario.width && p.size == UInt64(p.stride) * UInt64(p.height))
        #expect(p.offset == 0 && p.region == MBochs.vramRegion && p.id != 0)
        #expect(Self.idsAreOneToOne(r.planes))
    }

    @Test("boot: fbdev's three identical plane updates keep one plane id")
    func bootKeepsOneID() throws {
        let r = try replay("boot-norom")
        let enabled = r.planes.filter(\.isEnabled)
        #expect(!enabled.isEmpty)
        #expect(Set(enabled.map(\.id)).count == 1)
    }

    @Test("rebind: the second probe's identical mode set brings back the same id")
    func rebindSameID() throws {
        let r = try replay("rebind")
        let final = r.planes.filter { $0.isEnabled && $0.sameLayout(as: r.final) }
        #expect(final.count > 4)
        #expect(Set(final.map(\.id)) == [r.final.id])
        // And in between the plane really went away (ENABLE=0 at the start of each set mode).
        #expect(r.planes.contains { !$0.isEnabled })
    }

    @Test("modeset: a mode change and page flips change the id; flipping back finds the old one")
    func modesetIDs() throws {
        let r = try replay("modeset")
        // The KMS test flips a 1024x768 mode between buffers at 0x3e8000 and 0x6e8000.
        let front = r.planes.filter { $0.width == 1024 && $0.offset == 0x3e_8000 }
        let back = r.planes.filter { $0.width == 1024 && $0.offset == 0x6e_8000 }
        #expect(!front.isEmpty && !back.isEmpty)
        #expect(Set(front.map(\.id)).count == 1 && Set(back.map(\.id)).count == 1)
        #expect(front[0].id != back[0].id)
        let modes = Set(r.planes.filter(\.isEnabled).map { "\($0.width)x\($0.height)" })
        #expect(modes.isSuperset(of: ["1280x800", "800x600", "1024x768"]))
        let fbdev = r.planes.filter { $0.width == 1280 && $0.offset == 0 }
        #expect(Set(fbdev.map(\.id)).count == 1)
        #expect(fbdev[0].id != front[0].id)
    }
}
