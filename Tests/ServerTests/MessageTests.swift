import Glibc
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient

/// Each command's valid form and its error cases, over a real socket. Every
/// error case also checks that the connection still answers.
@Suite("Messages and their error cases")
struct MessageTests {
    @Test func deviceInfo() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let info = try c.deviceInfo()
        #expect(info.flags == VFIO.deviceFlagsPCI | VFIO.deviceFlagsReset)
        #expect(info.regionCount == 9 && info.irqCount == 5)
        // argsz below 16, short and long payloads
        #expect(try errnoOf(c, rawMessage(command: 4, payload: le32(8) + le32(0) + le32(0) + le32(0))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 4, payload: le32(16) + le32(0))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 4, payload: le32(16) + [UInt8](repeating: 0, count: 16))) == EINVAL)
        // header-only
        #expect(try errnoOf(c, rawMessage(command: 4)) == EINVAL)
        expectAlive(c)
    }

    @Test func headerValidation() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let info = le32(16) + le32(0) + le32(0) + le32(0)
        #expect(try errnoOf(c, rawMessage(command: 99, payload: info)) == EINVAL, "unknown command")
        #expect(try errnoOf(c, rawMessage(command: 0, payload: info)) == EINVAL, "command 0")
        #expect(try errnoOf(c, rawMessage(command: 4, flags: 0x40, payload: info)) == EINVAL, "unknown flag bit")
        #expect(try errnoOf(c, rawMessage(command: 4, flags: 2, payload: info)) == EINVAL, "unknown message type")
        #expect(try errnoOf(c, rawMessage(command: 4, error: 5, payload: info)) == EINVAL, "error field in a command")
        #expect(try errnoOf(c, rawMessage(command: 11, payload: le64(0) + le64(4))) == EINVAL, "DMA_READ from the client")
        #expect(try errnoOf(c, rawMessage(command: 14, payload: le32(16))) == ENOTSUP, "legacy DIRTY_PAGES")
        // A reply-typed message gets no answer; the next request does.
        try c.sendRaw(rawMessage(command: 4, flags: 1, payload: info))
        expectAlive(c)
    }

    @Test func oversizedMessageIsRefusedAndSkipped() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let big = Limits.maxMessageSize + 100
        let payload = le64(0) + le32(0) + le32(UInt32(big - 32)) + [UInt8](repeating: 0xaa, count: big - 32)
        #expect(try errnoOf(c, rawMessage(command: 10, payload: payload)) == E2BIG)
        expectAlive(c)
    }

    @Test func undersizedHeaderClosesTheConnectionOnly() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        try c.sendRaw(rawMessage(command: 4, size: 8))
        #expect(throws: ClientError.disconnected) { _ = try c.receiveMessage(timeout: 2000) }
        let again = try s.connect()
        expectAlive(again)
    }

    @Test func regionInfoTruncatesToArgszLikeQEMUExpects() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        // BAR1 is mmap-able: first ask with 32 gets the needed argsz, no caps, no fd.
        let first = try c.regionInfoOnce(1, argsz: 32)
        #expect(first.argsz == 64)
        #expect(first.flags == VFIO.regionFlagRead | VFIO.regionFlagWrite | VFIO.regionFlagMmap)
        #expect(first.fd == -1 && first.capabilityOffset == 0)
        let full = try c.regionInfoOnce(1, argsz: 64)
        #expect(full.flags & VFIO.regionFlagCaps != 0 && full.capabilityOffset == 32)
        #expect(full.sparseAreas.count == 1 && full.sparseAreas[0] == (0, 4096))
        #expect(full.fd >= 0)
        // Larger argsz: reply only what is needed.
        let roomy = try c.regionInfoOnce(1, argsz: 512)
        #expect(roomy.argsz == 64)
        // Absent and trapped regions
        let absent = try c.regionInfoOnce(3, argsz: 32)
        #expect(absent.size == 0 && absent.flags == 0)
        let config = try c.regionInfoOnce(7, argsz: 32)
        #expect(config.size == 256 && config.flags == VFIO.regionFlagRead | VFIO.regionFlagWrite)
        // Errors
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.regionInfoOnce(9, argsz: 32) }
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.regionInfoOnce(0xffff_ffff, argsz: 32) }
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.regionInfoOnce(0, argsz: 16) }
        #expect(try errnoOf(c, rawMessage(command: 5, payload: le32(32) + [UInt8](repeating: 0, count: 12))) == EINVAL)
        expectAlive(c)
    }

    @Test func regionFDMapsTheSameMemoryTheServerServes() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let info = try c.regionInfo(1)
        #expect(info.fd >= 0)
        let p = try #require(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, info.fd, off_t(info.offset)))
        defer { munmap(p, 4096) }
        try c.write32(region: 1, offset: 0x40, 0xfeed_f00d)
        #expect(p.load(fromByteOffset: 0x40, as: UInt32.self) == 0xfeed_f00d)
        p.storeBytes(of: 0x1234_5678, toByteOffset: 0x80, as: UInt32.self)
        #expect(try c.read32(region: 1, offset: 0x80) == 0x1234_5678)
    }

    @Test func regionReadWrite() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        for size in [1, 2, 4, 8] {
            let bytes = (0..<size).map { UInt8(0x10 + $0) }
            try c.write(region: 0, offset: 0x20, bytes: bytes)
            #expect(try c.read(region: 0, offset: 0x20, count: size) == bytes)
        }
        try c.write(region: 2, offset: 4, bytes: [0xef, 0xbe, 0xad, 0xde])
        #expect(try c.read32(region: 2, offset: 4) == 0xdead_beef)
        // Whole config space in one read, as QEMU does at realize.
        let config = try c.read(region: 7, offset: 0, count: 256)
        #expect(config[0] == 0xf4 && config[1] == 0x1a)
        // count 0 succeeds with a header-only answer
        #expect(try c.read(region: 0, offset: 0, count: 0).isEmpty)
        // Out-of-range offsets, bad index, count above the limit, count/size mismatch
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.read(region: 0, offset: 4095, count: 2) }
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.read(region: 0, offset: 4096, count: 1) }
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.read(region: 0, offset: UInt64.max, count: 2) }
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.read(region: 3, offset: 0, count: 1) }
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.read(region: 9, offset: 0, count: 1) }
        #expect(throws: ClientError.remote(EINVAL)) { try c.write(region: 2, offset: 31, bytes: [1, 2]) }
        #expect(try errnoOf(c, rawMessage(command: 9, payload: le64(0) + le32(0) + le32(2 << 20))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 9, payload: le64(0) + le32(0))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 10, payload: le64(0) + le32(0) + le32(4) + [1, 2])) == EINVAL)
        expectAlive(c)
    }

    @Test func postedWritesAreNeverAnswered() throws {
        let s = try MemoryServer(mappable: false)
        let c = try s.connect()
        try c.write32(region: 0, offset: 0x10, 0xabcd_0123, posted: true)
        // Even a failing posted write stays silent.
        try c.write32(region: 0, offset: 8192, 1, posted: true)
        #expect(c.isQuiet(for: 200))
        #expect(try c.read32(region: 0, offset: 0x10) == 0xabcd_0123)
    }

    @Test func writeMultiple() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        var p = le64(3)
        for (i, v) in [UInt32(0x11), 0x22, 0x33].enumerated() {
            p += le64(0x40 + UInt64(4 * i)) + le32(0) + le32(4) + le32(v) + le32(0)
        }
        let r = try c.request(.regionWriteMulti, payload: p)
        #expect(r.u64(0) == 3)
        #expect(try c.read32(region: 0, offset: 0x48) == 0x33)
        // entry count 9, zero entries, size mismatch
        var bad = le64(1) + le64(0x40) + le32(0) + le32(9) + le64(0)
        #expect(try errnoOf(c, rawMessage(command: 15, payload: bad)) == EINVAL)
        bad = le64(0)
        #expect(try errnoOf(c, rawMessage(command: 15, payload: bad)) == EINVAL)
        bad = le64(2) + le64(0x40) + le32(0) + le32(4) + le64(0)
        #expect(try errnoOf(c, rawMessage(command: 15, payload: bad)) == EINVAL)
        expectAlive(c)
    }

    @Test func irqInfo() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let intx = try c.irqInfo(0)
        #expect(intx.count == 1 && intx.flags == VFIO.irqInfoEventfd | VFIO.irqInfoMaskable | VFIO.irqInfoAutomasked)
        #expect(try c.irqInfo(3) == IRQInfo(flags: VFIO.irqInfoEventfd, index: 3, count: 1))
        #expect(try c.irqInfo(2).count == 4)
        #expect(throws: ClientError.remote(EINVAL)) { _ = try c.irqInfo(5) }
        #expect(try errnoOf(c, rawMessage(command: 7, payload: le32(8) + le32(0) + le32(0) + le32(0))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 7, payload: le32(16) + le32(0) + le32(0))) == EINVAL)
        expectAlive(c)
    }

    @Test func regionIOFDsListsNone() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let r = try c.request(.deviceGetRegionIOFDs, payload: le32(16) + le32(0) + le32(0) + le32(0))
        #expect(r.payload.count == 16 && r.u32(12) == 0 && r.fds.isEmpty)
        #expect(try errnoOf(c, rawMessage(command: 6, payload: le32(16) + le32(0) + le32(12) + le32(0))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 6, payload: le32(16) + le32(1) + le32(0) + le32(0))) == EINVAL)
        expectAlive(c)
    }

    @Test func descriptorsOnCommandsThatTakeNoneAreRefusedAndClosed() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let fd = eventfd()
        defer { close(fd) }
        #expect(try errnoOf(c, rawMessage(command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0)), fds: [fd]) == EINVAL)
        // Too many descriptors on a command that takes them.
        let many = (0..<12).map { _ in eventfd() }
        defer { many.forEach { close($0) } }
        let set = le32(20) + le32(VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger) + le32(2) + le32(0) + le32(4)
        #expect(try errnoOf(c, rawMessage(command: 8, payload: set), fds: many) == EINVAL)
        let map = le32(32) + le32(3) + le64(0) + le64(0x10000) + le64(0x1000)
        #expect(try errnoOf(c, rawMessage(command: 2, payload: map), fds: [fd, fd]) == EINVAL)
        expectAlive(c)
    }
}
