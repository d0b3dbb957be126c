import CShim
import Glibc
import Handover
import MBochs
import MTTY
import PCI
import Testing
import VFIOUser
import VFIOUserServer

/// The display, host and migration sections: what decodes encodes back,
/// and what a device could never have written is refused, by the decoder
/// or by the model that would take it.
@Suite("handover: the display, host and migration sections")
struct NewSectionTests {
    static let plane = DisplayPlane(kind: .dmabuf, fourcc: DRMFormat.xrgb8888, width: 640, height: 480, stride: 2560,
                                    size: 2560 * 480, region: MBochs.vramRegion, offset: 0, id: 3)

    @Test func aDisplaySectionReadsBackAsWritten() throws {
        let d = DisplaySection(instance: "u", listener: 1, ownsSocketFile: true, socketPath: "/run/u.display", nextPlaneID: 4, recent: [Self.plane])
        #expect(try DisplaySection(d.section.payload, descriptorCount: 2) == d)
        // The listener must be among the descriptors that came.
        #expect(throws: DeviceError.self) { try DisplaySection(d.section.payload, descriptorCount: 1) }
    }

    @Test func aDisplaySectionRefusesPlanesNoDeviceShows() throws {
        func changed(_ change: (inout DisplayPlane) -> Void) -> DisplayPlane { var p = Self.plane; change(&p); return p }
        let planes: [DisplayPlane] = [changed { $0.id = 0 }, changed { $0.fourcc = 0 }, changed { $0.size += 1 },
                                      changed { $0.offset = UInt64.max - 10 }]
        for bad in planes {
            let d = DisplaySection(instance: "", listener: nil, ownsSocketFile: false, socketPath: "", nextPlaneID: 4, recent: [bad])
            #expect(throws: DeviceError.self, "\(bad)") { try DisplaySection(d.section.payload, descriptorCount: 0) }
        }
        // A relative path, or a path with no socket to go with it.
        let relative = DisplaySection(instance: "", listener: 0, ownsSocketFile: true, socketPath: "run/x", nextPlaneID: 1, recent: [])
        #expect(throws: DeviceError.self) { try DisplaySection(relative.section.payload, descriptorCount: 1) }
        let orphan = DisplaySection(instance: "", listener: nil, ownsSocketFile: true, socketPath: "/run/x", nextPlaneID: 1, recent: [])
        #expect(throws: DeviceError.self) { try DisplaySection(orphan.section.payload, descriptorCount: 1) }
    }

    @Test func aHostSectionReadsBackAndKeepsItsLimits() throws {
        let h = HostSection(instance: "", entries: [
            .init(key: "port0", descriptors: [.init("master", 0), .init("slave", 1)], data: [1, 2, 3]),
            .init(key: "port1", descriptors: [.init("listener", 2)], data: []),
        ])
        #expect(try HostSection(h.section.payload, descriptorCount: 3) == h)
        #expect(throws: DeviceError.self) { try HostSection(h.section.payload, descriptorCount: 2) }
        let twice = HostSection(instance: "", entries: [.init(key: "port0", descriptors: [], data: []), .init(key: "port0", descriptors: [], data: [])])
        #expect(throws: DeviceError.self) { try HostSection(twice.section.payload, descriptorCount: 0) }
        let many = HostSection(instance: "", entries: [.init(key: "port0", descriptors: Array(repeating: .init("x", 0), count: 5), data: [])])
        #expect(throws: DeviceError.self) { try HostSection(many.section.payload, descriptorCount: 1) }
    }

    /// A pty line claims only a descriptor that is the master of the pty it names.
    @Test func anMTTYPortRefusesALineThatIsNotWhatItSays() throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[1]) }
        var data = StateWriter()
        data.u8(1); data.name("/dev/pts/0"); data.u32(0)
        let fake = HostResource(key: "port0", descriptors: [.init(role: "master", fd: pair[0])], data: data.bytes)
        #expect(throws: DeviceError.self) {
            _ = try HostResourceAdoption.offering([fake], owning: false) { () throws(DeviceError) in try MTTY(ports: 1, backends: [.pty]) }
        }
        #expect(fcntl(pair[0], F_GETFD) < 0, "the refused descriptor is closed")
        // A line for a port configured otherwise is left unclaimed, for the caller to close.
        let other = HostResource(key: "port1", descriptors: [], data: data.bytes)
        let (_, unclaimed) = try HostResourceAdoption.offering([other], owning: false) { () throws(DeviceError) in try MTTY(ports: 1) }
        #expect(unclaimed.map(\.key) == ["port1"])
    }

    @Test func aMigrationSectionReadsBackAndTheMachineRefusesWhatItCouldNotBeIn() throws {
        let device = try MTTY(ports: 2)
        let host = DeviceHost(device: device, typeName: "mtty-2")
        let stream = try host.saveMigrationState()
        let m = MigrationSection(instance: "x", snapshot: MigrationSnapshot(state: .stopCopy, outgoing: stream, readPosition: 7, incoming: []))
        #expect(try MigrationSection(m.section.payload) == m)
        try host.adoptMigration(m.snapshot)
        #expect(host.migrationState == .stopCopy)

        let other = DeviceHost(device: try MTTY(ports: 1), typeName: "mtty-1")
        let bad: [MigrationSnapshot] = [
            MigrationSnapshot(state: .stopCopy, outgoing: stream, readPosition: 0, incoming: []),   // another device's identity
            MigrationSnapshot(state: .stop, outgoing: [1], readPosition: 0, incoming: []),          // a stream while stopped
            MigrationSnapshot(state: .running, outgoing: [], readPosition: 0, incoming: []),
            MigrationSnapshot(state: .runningP2P, outgoing: [], readPosition: 0, incoming: []),     // a state umdev does not offer
            MigrationSnapshot(state: .preCopy, outgoing: [], readPosition: 0, incoming: [1]),       // incoming while saving
        ]
        for b in bad {
            #expect(throws: DeviceError.self, "\(b.state)") { try other.adoptMigration(b) }
            #expect(other.migrationState == .running)
        }
        var past = m.section.payload
        // The read position beyond the stream.
        let at = 1 + 1 + 4 + 4 + stream.count
        past[at] = 0xff; past[at + 1] = 0xff
        #expect(throws: DeviceError.self) { try MigrationSection(past) }
    }

    /// Memory another process hands over is taken only if its size is
    /// sealed: an unsealed memfd could be shrunk under this process's mapping.
    @Test func anUnsealedMemfdIsNotTakenAsVRAM() throws {
        let fd = umdev_memfd("umdev-mbochs-small-vram")
        #expect(ftruncate(fd, 4 << 20) == 0)
        let (device, unclaimed) = try MemoryAdoption.offering([fd]) { () throws(DeviceError) in try MBochs(type: .small) }
        #expect(unclaimed == [fd] && !device.vram.wasHandedOver)
        close(fd)
        let sealed = umdev_memfd("umdev-mbochs-small-vram")
        #expect(ftruncate(sealed, 4 << 20) == 0 && umdev_memfd_seal_size(sealed) == 0)
        let (taken, none) = try MemoryAdoption.offering([sealed]) { () throws(DeviceError) in try MBochs(type: .small) }
        #expect(none.isEmpty && taken.vram.wasHandedOver && taken.vram.fd.rawValue == sealed)
    }

    /// A handover save leaves VRAM's pages in the memfd; restoring that
    /// into memory that was not taken over is refused, not shown blank.
    @Test func vramTravelsAsItsDescriptorNeverAsACopy() throws {
        let device = try MBochs(type: .small)
        device.vram.bytes.storeBytes(of: UInt32(0xdead_beef), toByteOffset: 4096 * 5, as: UInt32.self)
        let migration = device.saveState()
        let handover = SharedMemory.savingForHandover { device.saveState() }
        #expect(handover.count < migration.count - 4096)
        let fresh = try MBochs(type: .small)
        #expect(throws: DeviceError.self) { try fresh.restoreState(handover, version: MBochs.stateVersion) }
        try fresh.restoreState(migration, version: MBochs.stateVersion)
        #expect(fresh.vram.bytes.load(fromByteOffset: 4096 * 5, as: UInt32.self) == 0xdead_beef)
    }
}
