import Foundation
import Glibc
import Handover
import PCI
import Testing
import VFIOUserServer

@Suite("handover: the device and connection sections")
struct DeviceSectionTests {
    /// A connection as a paused endpoint reports it, descriptors as numbers 100+.
    func liveState() -> ConnectionState {
        var caps = Capabilities()
        caps.maxMessageFDs = 16
        caps.migration = .init()
        caps.gfxPlane = 1
        return ConnectionState(
            client: caps, fdLimit: 16, maxWindows: 65535, lastRequestID: 7, intxLevel: true,
            framer: .init(bytes: [1, 2, 3], pendingFDs: [100], pendingFDOwner: 0, pendingOverflow: false, discard: 0),
            windows: [.init(map: DMAMap(flags: 3, offset: 0x1000, address: 0x10_0000, size: 0x1_0000), fd: 101),
                      .init(map: DMAMap(flags: 1, offset: 0, address: 0x20_0000, size: 0x1000), fd: -1)],
            vectors: [.init(index: 0, vector: 0, trigger: 102, unmask: 103, mask: -1, masked: true, pending: true)])
    }

    @Test func aConnectionReadsBackAsWritten() throws {
        var list = DescriptorList()
        let listener = list.add(99, role: .deviceListener, name: "listener")
        let written = ConnectionSection(instance: "", socket: 98, live: liveState(), into: &list)
        let device = DeviceSection(instance: "", listener: listener, ownsSocketFile: true, regionMemory: [])
        let h = Handover(sections: [device.section, written.section] + list.inventory.map(\.section))
        let read = try Handover.decode(h.encode(), descriptorCount: list.fds.count)
        #expect(list.fds == [99, 98, 100, 101, 102, 103])
        let c = try ConnectionSection(try #require(read.sections(.connection).first).payload, descriptorCount: list.fds.count)
        #expect(c.socket == 1)
        #expect(c.state.client == liveState().client)
        #expect(c.state.framer == ConnectionState.FramerState(bytes: [1, 2, 3], pendingFDs: [2], pendingFDOwner: 0,
                                                                pendingOverflow: false, discard: 0))
        #expect(c.state.windows.map(\.fd) == [3, -1])
        #expect(c.state.windows.map(\.map) == liveState().windows.map(\.map))
        #expect(c.state.vectors == [.init(index: 0, vector: 0, trigger: 4, unmask: 5, mask: -1, masked: true, pending: true)])
        #expect(c.state.lastRequestID == 7 && c.state.intxLevel)
        #expect(try DeviceSection(try #require(read.sections(.device).first).payload, descriptorCount: list.fds.count) == device)
    }

    /// QEMU maps guest memory as several windows, and a display device has
    /// no IRQ vectors wired: the section must read back with many windows
    /// and nothing after them (a real QEMU's nine windows were once refused).
    @Test func manyDMAWindowsAndNoVectorsReadBack() throws {
        var live = liveState()
        live.vectors = []
        var windows: [ConnectionState.DMAWindowRecord] = []
        for i in 0..<40 {
            let map = DMAMap(flags: 3, offset: 0, address: UInt64(i) << 32, size: 0x1000)
            let fd: Int32 = i % 2 == 0 ? Int32(200 + i) : -1
            windows.append(ConnectionState.DMAWindowRecord(map: map, fd: fd))
        }
        live.windows = windows
        var list = DescriptorList()
        let written = ConnectionSection(instance: "x", socket: 98, live: live, into: &list)
        let c = try ConnectionSection(written.section.payload, descriptorCount: list.fds.count)
        #expect(c.state.windows.map(\.map) == live.windows.map(\.map))
        #expect(c.state.windows.filter { $0.fd >= 0 }.count == 20 && c.state.vectors.isEmpty)
        #expect(c.section.payload == written.section.payload)
    }

    @Test func anIndexBeyondTheDescriptorsIsRefused() throws {
        var list = DescriptorList()
        let section = ConnectionSection(instance: "", socket: 98, live: liveState(), into: &list).section
        let h = Handover(sections: [section])
        #expect(throws: DeviceError.self) { try Handover.decode(h.encode(), descriptorCount: list.fds.count - 1) }
    }

    @Test func aPoolHandsEachDescriptorOutOnce() throws {
        let a = twoDescriptors()
        let pool = DescriptorPool(a)
        #expect(try pool.take(0, for: "x") == a[0])
        #expect(throws: DeviceError.self) { try pool.take(0, for: "again") }
        #expect(throws: DeviceError.self) { try pool.take(5, for: "out of range") }
        close(a[0])
        #expect(pool.closeUnclaimed() == 1)
        #expect(fcntl(a[1], F_GETFD) < 0)
    }

    private func twoDescriptors() -> [Int32] { [dup(0), dup(0)] }

    /// The seeds the fuzz target starts from decode, and carry every
    /// section type a handover has: the fuzzer starts from real shapes.
    @Test func theFuzzSeedsDecode() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Fuzz/corpus/handover").standardized
        let seeds = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        #expect(seeds.count >= 7)
        var seen: [SectionType: Int] = [:]
        var stateFiles = 0
        for name in seeds {
            let bytes = [UInt8](try Data(contentsOf: dir.appendingPathComponent(name)))
            // Byte 0 bit 6: a state memfd's bytes, whose copy is the handover.
            let document = bytes[0] & 0x40 != 0 ? try StateKeeper.copy(inFile: Array(bytes.dropFirst())) : Array(bytes.dropFirst())
            if bytes[0] & 0x40 != 0 { stateFiles += 1 }
            let h = try Handover.decode(document, descriptorCount: Int(bytes[0] % 64))
            for s in h.sections { if let t = SectionType(rawValue: s.type) { seen[t, default: 0] += 1 } }
        }
        for t in [SectionType.writer, .descriptor, .modelState, .device, .connection, .daemon, .instance, .display, .host, .migration] {
            #expect(seen[t, default: 0] >= 1, "no seed has a \(t) section")
        }
        #expect(seen[.connection] == 3)
        #expect(stateFiles == 2, "the seeds hold state memfds too")
    }
}

extension DeviceSectionTests {
    /// A boolean byte is 0 or 1: anything else is refused, not read as true.
    @Test func aFlagOtherThanZeroOrOneIsRefused() throws {
        var list = DescriptorList()
        var payload = ConnectionSection(instance: "", socket: 98, live: liveState(), into: &list).section.payload
        // name (1 byte: empty), socket (4), negotiated (1): the negotiated flag is byte 5.
        payload[5] = 2
        #expect(throws: DeviceError.self) { try ConnectionSection(payload, descriptorCount: list.fds.count) }
        var device = DeviceSection(instance: "", listener: nil, ownsSocketFile: true, regionMemory: []).section.payload
        device[5] = 7   // the owns-socket-file byte, after the name (1) and the listener (4)
        #expect(throws: DeviceError.self) { try DeviceSection(device, descriptorCount: 0) }
    }
}
