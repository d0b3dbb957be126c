import Glibc
import Handover
import MTTY
import PCI
import Testing

@Suite("handover format: versioned, typed sections, read as hostile input")
struct HandoverTests {
    /// A handover as a serve process would write it for an mtty-2 with a client.
    func sample() throws -> (Handover, MTTY) {
        let device = try MTTY(ports: 2)
        // Something to carry: the scratch register of port 0.
        _ = withUnsafeBytes(of: UInt8(0x5a)) { device.write(region: 0, offset: 7, data: $0) }
        let h = Handover(sections: [
            Writer(version: "umdev 0.9", pid: 4242).section,
            InventoryItem(index: 0, role: .deviceListener, name: "mtty-2/listener").section,
            InventoryItem(index: 1, role: .clientConnection, name: "mtty-2/client").section,
            ModelState(type: "mtty-2", state: device.saveState()).section,
        ])
        return (h, device)
    }

    func failure(_ bytes: [UInt8], descriptors: Int = 2) -> String? {
        do { _ = try Handover.decode(bytes, descriptorCount: descriptors); return nil } catch { return error.message }
    }

    @Test func whatIsWrittenIsReadBackAndTheDeviceResumesFromIt() throws {
        let (h, _) = try sample()
        let read = try Handover.decode(h.encode(), descriptorCount: 2)
        #expect(read == h)
        let items = try read.sections(.descriptor).map { try InventoryItem($0.payload, descriptorCount: 2) }
        #expect(items.map(\.role) == [.deviceListener, .clientConnection])
        #expect(items.map(\.name) == ["mtty-2/listener", "mtty-2/client"])
        #expect(try Writer(try #require(read.sections(.writer).first).payload) == Writer(version: "umdev 0.9", pid: 4242))
        let state = try ModelState(try #require(read.sections(.modelState).first).payload)
        #expect(state.type == "mtty-2")
        let fresh = try MTTY(ports: 2)
        try fresh.restoreState(state.state, version: MTTY.stateVersion)
        var scratch: UInt8 = 0
        _ = withUnsafeMutableBytes(of: &scratch) { fresh.read(region: 0, offset: 7, into: $0) }
        #expect(scratch == 0x5a)
    }

    @Test func everyTruncationIsRefusedInWords() throws {
        let bytes = try sample().0.encode()
        for n in 0..<bytes.count {
            let why = try #require(failure(Array(bytes[0..<n])), "a handover cut at \(n) bytes was accepted")
            #expect(why.contains("handover"), "cut at \(n): \(why)")
        }
    }

    @Test func aVersionThisBuildDoesNotReadIsRefusedNamingBoth() throws {
        var bytes = try sample().0.encode()
        bytes[4] = 9; bytes[5] = 0
        #expect(failure(bytes) == "handover version 9; this umdev reads 1...1")
        #expect(failure(Array("UMDX".utf8) + bytes[4...]) == "not handover")
    }

    @Test func unknownSectionsAreSkippedUnlessRequired() throws {
        let (h, _) = try sample()
        var optional = h
        optional.sections.insert(Handover.Section(type: 999, required: false, payload: [1, 2, 3]), at: 1)
        let read = try Handover.decode(optional.encode(), descriptorCount: 2)
        #expect(read.sections.count == 5 && read.sections(.descriptor).count == 2)
        var required = h
        required.sections.append(Handover.Section(type: 999, required: true, payload: []))
        #expect(failure(required.encode()) == "handover section 999 is required and this umdev does not know it (a newer writer)")
    }

    @Test func descriptorsMustHaveComeWithTheHandover() throws {
        let bytes = try sample().0.encode()
        #expect(failure(bytes, descriptors: 1) == "handover names descriptor 1 but 1 came with it")
        #expect(failure(bytes, descriptors: 0) == "handover names descriptor 0 but 0 came with it")
    }

    @Test func aDescriptorNamedTwiceIsRefused() throws {
        let twice = Handover(sections: [InventoryItem(index: 0, role: .deviceListener, name: "a").section,
                                        InventoryItem(index: 0, role: .clientConnection, name: "b").section])
        #expect(failure(twice.encode(), descriptors: 1) == "handover names descriptor 0 twice")
    }

    @Test func aLongNameIsCutOnACharacterBoundary() throws {
        let long = String(repeating: "é", count: 200)   // 400 bytes of UTF-8
        let h = Handover(sections: [Writer(version: long, pid: 1).section])
        let read = try Writer(try #require(Handover.decode(h.encode(), descriptorCount: 0).sections.first).payload)
        #expect(read.version == String(repeating: "é", count: 127))
    }

    @Test func aRoleFromANewerWriterIsReadAsUnknown() throws {
        var payload = InventoryItem(index: 0, role: .viewer, name: "v").section.payload
        payload[4] = 0xee; payload[5] = 0xee
        let item = try InventoryItem(payload, descriptorCount: 1)
        #expect(item.role == nil && item.rawRole == 0xeeee && item.name == "v")
    }

    @Test func malformedSectionsAreRefused() throws {
        var h = Handover(sections: [Writer(version: "x", pid: 1).section])
        var bytes = h.encode()
        bytes[10] = 4   // flags: an unknown bit
        #expect(failure(bytes) == "handover section 1 has unknown flags 4")
        bytes = h.encode() + [0]
        #expect(failure(bytes) == "handover has bytes left over")
        h.sections[0].payload += [7]
        #expect(failure(h.encode()) == "handover writer section has bytes left over")
        h.sections = [Handover.Section(type: SectionType.writer.rawValue, required: false, payload: [2, 0xff, 0xfe, 0, 0, 0, 0])]
        #expect(failure(h.encode()) == "handover writer section has a name that is not UTF-8")
        // A length beyond the end, rather than a truncated field.
        bytes = Handover(sections: [Writer(version: "x", pid: 1).section]).encode()
        bytes[12] = 0xff
        #expect(failure(bytes) == "handover section 1 is longer than the handover")
    }
}
