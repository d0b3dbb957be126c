import Glibc
import Handover
import PCI
import Testing

/// A state memfd as StateKeeper writes it (Protocol/HANDOVER.md, "Kept in
/// the fd store"), and what a reader refuses: it comes from another process.
@Suite("handover: a device's state kept in the fd store")
struct StateFileTests {
    static func fnv(_ b: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for x in b { h = (h ^ UInt64(x)) &* 0x100_0000_01b3 }
        return h
    }

    /// Two copies and a header naming the second.
    static func file(document: [UInt8], offset: Int = 64 + 256, length: Int? = nil, sum: UInt64? = nil,
                     magic: UInt32 = 0x5344_4d55, format: UInt16 = 1) -> [UInt8] {
        var w = StateWriter()
        w.u32(magic); w.u16(format); w.u16(0); w.u64(2); w.u64(UInt64(offset)); w.u64(UInt64(length ?? document.count))
        w.u64(sum ?? fnv(document))
        var f = w.bytes + [UInt8](repeating: 0, count: 64 - w.bytes.count)
        f += Handover().encode() + [UInt8](repeating: 0xee, count: 256 - Handover().encode().count)
        return f + document
    }

    let document = Handover(sections: [Writer(version: "0.18.0", pid: 7).section]).encode()

    @Test func theCopyTheHeaderNamesIsRead() throws {
        #expect(try StateKeeper.copy(inFile: Self.file(document: document)) == document)
        #expect(try Handover.decode(try StateKeeper.copy(inFile: Self.file(document: document)), descriptorCount: 0).sections.count == 1)
    }

    @Test(arguments: [
        ("a torn copy", file(document: Handover(sections: [Writer(version: "0.18.0", pid: 7).section]).encode(), sum: 1), "torn"),
        ("past the end", file(document: [1, 2, 3], length: 4), "outside"),
        ("offset past the end", file(document: [1, 2, 3], offset: 1 << 40), "outside"),
        ("inside the header", file(document: [1, 2, 3], offset: 8), "outside"),
        ("no magic", file(document: [1, 2, 3], magic: 0x4844_4d55), "magic"),
        ("a newer format", file(document: [1, 2, 3], format: 2), "format 2"),
        ("shorter than the header", [UInt8](repeating: 0, count: 63), "shorter"),
    ])
    func aBadStateIsRefused(_ name: String, _ file: [UInt8], _ reason: String) {
        do {
            _ = try StateKeeper.copy(inFile: file)
            Issue.record("\(name) was read")
        } catch {
            #expect(error.message.contains(reason), "\(name): \(error.message)")
        }
    }
}
