import Glibc
import PCI
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient

@Suite("Reset, migration and connection lifecycle")
struct LifecycleTests {
    @Test func resetRestoresPowerOnState() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        try c.write32(region: 0, offset: 0x20, 0x1234)
        try c.write16(region: 7, offset: 4, 0x0007)
        try c.write32(region: 7, offset: 0x10, 0xfebf_0000)
        #expect(try c.read32(region: 7, offset: 0x10) == 0xfebf_0000)
        try c.reset()
        #expect(try c.read32(region: 0, offset: 0x20) == 0)
        #expect(try c.read16(region: 7, offset: 4) == 0)
        #expect(try c.read32(region: 7, offset: 0x10) == 0)
        #expect(try errnoOf(c, rawMessage(command: 13, payload: [0])) == EINVAL)
    }

    @Test func migrationFeatureProbeAndStates() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        _ = try c.feature(VFIO.featureMigration, flags: VFIO.featureProbe | VFIO.featureGet)
        let flags = try c.feature(VFIO.featureMigration, flags: VFIO.featureGet)
        #expect(flags == le64(VFIO.migrationStopCopy | VFIO.migrationPreCopy))
        #expect(try c.migrationState() == .running)
        // Every allowed arc, and multi-step changes.
        try c.setMigrationState(.stop)
        try c.setMigrationState(.stopCopy)
        try c.setMigrationState(.stop)
        try c.setMigrationState(.resuming)
        // RESUMING → STOP validates the stream: an empty one is refused.
        #expect(throws: ClientError.remote(EINVAL)) { try c.setMigrationState(.stop) }
        try c.reset()
        try c.setMigrationState(.stop)
        try c.setMigrationState(.preCopy)  // STOP → RUNNING → PRE_COPY
        try c.setMigrationState(.stopCopy)
        #expect(try c.migrationState() == .stopCopy)
        // Not allowed: STOP_COPY → PRE_COPY, P2P states, ERROR, unknown.
        #expect(throws: ClientError.remote(EINVAL)) { try c.setMigrationState(.preCopy) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.setMigrationState(.runningP2P) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.setMigrationState(.error) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.feature(VFIO.featureMigDeviceState, flags: VFIO.featureSet, data: le32(42) + le32(0)) }
        try c.setMigrationState(.running)
        // Dirty logging is unsupported; unknown features too; GET and SET together is refused.
        #expect(throws: ClientError.remote(ENOTTY)) { try c.feature(VFIO.featureDMALoggingStart, flags: VFIO.featureSet, data: le64(4096) + le32(0) + le32(0)) }
        #expect(throws: ClientError.remote(ENOTTY)) { try c.feature(VFIO.featureDMALoggingReport, flags: VFIO.featureProbe | VFIO.featureGet) }
        #expect(throws: ClientError.remote(ENOTTY)) { try c.feature(0x77, flags: VFIO.featureGet) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.feature(VFIO.featureMigration, flags: VFIO.featureGet | VFIO.featureSet) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.feature(VFIO.featureMigration, flags: VFIO.featureGet, argsz: 8) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.feature(VFIO.featureMigration, flags: 1 << 20 | VFIO.featureGet) }
        // MIG_DATA outside the saving/resuming states.
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.readMigrationData() }
        #expect(throws: ClientError.remote(EINVAL)) { try c.writeMigrationData([1, 2, 3]) }
        #expect(try errnoOf(c, rawMessage(command: 17, payload: le32(8) + le32(16))) == EINVAL, "argsz below 8 + size")
        #expect(try errnoOf(c, rawMessage(command: 18, payload: le32(12) + le32(8) + [1, 2, 3, 4])) == EINVAL, "short data")
        expectAlive(c)
    }

    @Test func stopCopyThenResumeIntoAnotherServer() throws {
        let source = try MemoryServer()
        let a = try source.connect()
        try a.write(region: 0, offset: 0x30, bytes: Array("migrate me".utf8))
        try a.write(region: 1, offset: 0x100, bytes: [1, 2, 3, 4])
        try a.write(region: 2, offset: 0, bytes: [0x5a])
        try a.write16(region: 7, offset: 4, 0x0003)
        try a.setMigrationState(.preCopy)
        let early = try a.readMigrationData(chunk: 64)
        try a.setMigrationState(.stopCopy)
        let rest = try a.readMigrationData(chunk: 1000)
        let stream = early + rest
        #expect(stream.count > 8000)
        try a.setMigrationState(.stop)

        let target = try MemoryServer()
        let b = try target.connect()
        try b.setMigrationState(.resuming)
        try b.writeMigrationData(stream, chunk: 3000)
        try b.setMigrationState(.running)
        #expect(try b.read(region: 0, offset: 0x30, count: 10) == Array("migrate me".utf8))
        #expect(try b.read(region: 1, offset: 0x100, count: 4) == [1, 2, 3, 4])
        #expect(try b.read8(region: 2, offset: 0) == 0x5a)
        #expect(try b.read16(region: 7, offset: 4) == 0x0003)
    }

    @Test func resumeRefusesAnotherTypeOrACorruptStream() throws {
        let source = MemoryServer(try TestDevice(), type: "test")
        let a = try source.connect()
        try a.setMigrationState(.stopCopy)
        let stream = try a.readMigrationData()
        let other = MemoryServer(try TestDevice(mappable: false), type: "test-nommap")
        let b = try other.connect()
        try b.setMigrationState(.resuming)
        try b.writeMigrationData(stream)
        #expect(throws: ClientError.remote(EINVAL)) { try b.setMigrationState(.stop) }
        #expect(try b.migrationState() == .resuming)
        var corrupt = stream
        corrupt[0] ^= 0xff
        try b.writeMigrationData(corrupt)
        #expect(throws: ClientError.remote(EINVAL)) { try b.setMigrationState(.stop) }
        // Reset leaves RESUMING for RUNNING.
        try b.reset()
        #expect(try b.migrationState() == .running)
    }

    @Test func reconnectKeepsDeviceStateAndDropsClientResources() throws {
        let s = try MemoryServer()
        do {
            let c = try s.connect()
            try c.write32(region: 0, offset: 0x40, 0xcafe)
            let fd = eventfd()
            try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [fd])
            close(fd)
            try c.dmaMap(address: 0x1000, size: 0x1000)
        }
        // Poweroff-style bare close; the next client gets the same device.
        let c2 = try s.connect()
        #expect(try c2.read32(region: 0, offset: 0x40) == 0xcafe)
        try c2.dmaMap(address: 0x1000, size: 0x1000) // the old window is gone
    }

    // Over sockets: the point is two servers' threads, one stalled mid-read.
    @Test func aStalledClientDoesNotBlockAnotherDevice() throws {
        let first = try LiveServer()
        let second = try LiveServer()
        let stalled = try first.connect()
        // Half a message, then silence.
        try stalled.sendRaw(Array(rawMessage(command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0))[0..<10]))
        let c = try second.connect()
        for _ in 0..<100 { _ = try c.deviceInfo() }
        // A second client of the stalled device waits; it is served once the first leaves.
        _ = stalled
    }

    @Test func partialWritesAreReassembled() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let m = rawMessage(id: 42, command: 9, payload: le64(0x10) + le32(7) + le32(4))
        for b in m { try c.sendRaw([b]) }   // each byte is a read of its own
        let r = try c.receiveMessage()
        #expect(r.header.messageID == 42 && r.payload.count == 20)
    }
}
