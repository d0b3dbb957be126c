import Glibc
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient

/// A test device served in-process with its INTx wired to an eventfd.
final class WiredINTx {
    let server: MemoryServer
    let client: VFIOUserClient
    let fd = eventfd()

    init() throws {
        server = try MemoryServer()
        client = try server.connect()
        try client.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [fd])
    }

    deinit { close(fd) }
}

@Suite("DEVICE_SET_IRQS and interrupt delivery")
struct InterruptTests {
    let trigger = VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger
    let unmaskNone = VFIO.irqSetDataNone | VFIO.irqSetActionUnmask
    let maskNone = VFIO.irqSetDataNone | VFIO.irqSetActionMask

    func ringDoorbell(_ c: VFIOUserClient) throws { try c.write32(region: 0, offset: TestDevice.Register.doorbell, 1) }
    func clearStatus(_ c: VFIOUserClient) throws { try c.write32(region: 0, offset: TestDevice.Register.status, 1) }

    @Test func intxIsAutomaskedAndUnmaskedByTheClient() throws {
        let wired = try WiredINTx()
        let c = wired.client, fd = wired.fd
        try ringDoorbell(c)
        #expect(waitSignal(fd) == 1)
        // Masked now: a second doorbell does not signal...
        try clearStatus(c)
        try ringDoorbell(c)
        #expect(waitSignal(fd, ms: 100) == 0)
        // ...until the client unmasks (QEMU under TCG: UNMASK + DATA_NONE).
        try c.setIRQs(index: 0, flags: unmaskNone, count: 1)
        #expect(waitSignal(fd) == 1)
    }

    @Test func unmaskWithNothingPendingDoesNotFire() throws {
        let wired = try WiredINTx()
        let c = wired.client, fd = wired.fd
        try ringDoorbell(c)
        #expect(waitSignal(fd) == 1)
        try clearStatus(c)
        try c.setIRQs(index: 0, flags: unmaskNone, count: 1)
        #expect(waitSignal(fd, ms: 100) == 0)
    }

    @Test func levelStillHighAtUnmaskFiresAgain() throws {
        let wired = try WiredINTx()
        let c = wired.client, fd = wired.fd
        try ringDoorbell(c)
        #expect(waitSignal(fd) == 1)
        // The guest did not clear STATUS.IS: the line is still asserted.
        try c.setIRQs(index: 0, flags: unmaskNone, count: 1)
        #expect(waitSignal(fd) == 1)
    }

    @Test func explicitMaskHoldsBackAnEdge() throws {
        let wired = try WiredINTx()
        let c = wired.client, fd = wired.fd
        try c.setIRQs(index: 0, flags: maskNone, count: 1)
        try ringDoorbell(c)
        #expect(waitSignal(fd, ms: 100) == 0)
        try c.setIRQs(index: 0, flags: unmaskNone, count: 1)
        #expect(waitSignal(fd) == 1)
        // DATA_BOOL masks/unmasks only the selected vectors
        try clearStatus(c)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataBool | VFIO.irqSetActionUnmask, count: 1, bools: [1])
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataBool | VFIO.irqSetActionMask, count: 1, bools: [0])
        try ringDoorbell(c)
        #expect(waitSignal(fd) == 1)
    }

    // Over a socket: the server must wake for the resample fd on its own, with no request to serve.
    @Test func resampleEventfdUnmasksLikeKVM() throws {
        let s = try LiveServer()
        let c = try s.connect()
        let fd = eventfd(), resample = eventfd()
        defer { close(fd); close(resample) }
        try c.setIRQs(index: 0, flags: trigger, count: 1, fds: [fd])
        try c.setIRQs(index: 0, flags: maskNone, count: 1)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionUnmask, count: 1, fds: [resample])
        try c.setIRQs(index: 0, flags: unmaskNone, count: 1)
        try ringDoorbell(c)
        #expect(waitSignal(fd) == 1)
        try clearStatus(c)
        try ringDoorbell(c)
        #expect(waitSignal(fd, ms: 100) == 0)
        // The guest's EOI: KVM signals the resample fd; the server unmasks and re-fires.
        var one: UInt64 = 1
        _ = write(resample, &one, 8)
        #expect(waitSignal(fd) == 1)
    }

    @Test func clientTriggerAndMSI() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let msi = eventfd()
        let msix = (0..<4).map { _ in eventfd() }
        defer { close(msi); msix.forEach { close($0) } }
        try c.setIRQs(index: 1, flags: trigger, count: 1, fds: [msi])
        try c.write32(region: 0, offset: TestDevice.Register.msiTrigger, 0)
        #expect(waitSignal(msi) == 1)
        // MSI is not automasked: a second trigger fires at once.
        try c.write32(region: 0, offset: TestDevice.Register.msiTrigger, 0)
        #expect(waitSignal(msi) == 1)
        // Loopback trigger from the client.
        try c.setIRQs(index: 1, flags: VFIO.irqSetDataNone | VFIO.irqSetActionTrigger, count: 1)
        #expect(waitSignal(msi) == 1)
        // MSI-X: vectors 1..3 wired in one message with start 1.
        try c.setIRQs(index: 2, flags: trigger, start: 1, count: 3, fds: Array(msix[1...]))
        try c.write32(region: 0, offset: TestDevice.Register.msixTrigger, 2)
        #expect(waitSignal(msix[2]) == 1)
        #expect(waitSignal(msix[1], ms: 50) == 0)
        // DATA_BOOL trigger of vector 3 only
        try c.setIRQs(index: 2, flags: VFIO.irqSetDataBool | VFIO.irqSetActionTrigger, start: 1, count: 3, bools: [0, 0, 1])
        #expect(waitSignal(msix[3]) == 1)
        // De-assign (no fds) then disable (count 0).
        try c.setIRQs(index: 2, flags: trigger, start: 2, count: 1)
        try c.write32(region: 0, offset: TestDevice.Register.msixTrigger, 2)
        #expect(waitSignal(msix[2], ms: 50) == 0)
        try c.setIRQs(index: 2, flags: VFIO.irqSetDataNone | VFIO.irqSetActionTrigger, count: 0)
        try c.write32(region: 0, offset: TestDevice.Register.msixTrigger, 1)
        #expect(waitSignal(msix[1], ms: 50) == 0)
    }

    @Test func setIRQsErrors() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        let fd = eventfd()
        defer { close(fd) }
        func code(_ flags: UInt32, index: UInt32 = 0, start: UInt32 = 0, count: UInt32 = 1, fds: [Int32] = [], bools: [UInt8] = [],
                  argsz: UInt32? = nil) throws -> Int32 {
            let payload = le32(argsz ?? UInt32(20 + bools.count)) + le32(flags) + le32(index) + le32(start) + le32(count) + bools
            return try errnoOf(c, rawMessage(command: 8, payload: payload), fds: fds)
        }
        #expect(try code(trigger, index: 5, fds: [fd]) == EINVAL, "index out of range")
        #expect(try code(trigger | VFIO.irqSetDataNone) == EINVAL, "two data types")
        #expect(try code(VFIO.irqSetDataNone | VFIO.irqSetActionMask | VFIO.irqSetActionUnmask) == EINVAL, "two actions")
        #expect(try code(VFIO.irqSetDataNone) == EINVAL, "no action")
        #expect(try code(0x40 | VFIO.irqSetDataNone | VFIO.irqSetActionTrigger) == EINVAL, "unknown flag")
        #expect(try code(trigger, start: 1, fds: [fd]) == EINVAL, "start beyond the vectors")
        #expect(try code(trigger, index: 2, start: 3, count: 2, fds: [fd, fd]) == EINVAL, "range beyond the vectors")
        #expect(try code(trigger, start: 0xffff_ffff, count: 2) == EINVAL, "start+count wraps")
        #expect(try code(maskNone, index: 1) == EINVAL, "MSI is not maskable")
        #expect(try code(maskNone, index: 3) == EINVAL, "ERR only takes TRIGGER")
        #expect(try code(VFIO.irqSetDataNone | VFIO.irqSetActionTrigger, start: 1, count: 0) == EINVAL, "count 0 from start 1")
        #expect(try code(maskNone, count: 0) == EINVAL, "count 0 with MASK")
        #expect(try code(VFIO.irqSetDataBool | VFIO.irqSetActionTrigger, bools: [1, 1]) == EINVAL, "bool count mismatch")
        #expect(try code(VFIO.irqSetDataNone | VFIO.irqSetActionTrigger, fds: [fd]) == EINVAL, "fds with DATA_NONE")
        #expect(try code(trigger, index: 2, count: 2, fds: [fd]) == EINVAL, "fd count differs from count")
        #expect(try code(trigger, argsz: 16) == EINVAL, "argsz differs from the payload")
        #expect(try errnoOf(c, rawMessage(command: 8, payload: le32(12) + le32(0) + le32(0))) == EINVAL, "short payload")
        // Disabling an index with no vectors is accepted (QEMU sends it).
        #expect(try code(VFIO.irqSetDataNone | VFIO.irqSetActionTrigger, index: 4, count: 0) == 0)
        expectAlive(c)
    }
}
