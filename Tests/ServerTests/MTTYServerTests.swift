import CShim
import Glibc
import MTTY
import Testing
import UnixSocket
import VFIOUser
import VFIOUserClient
import VFIOUserServer

/// Drives mtty over a real socket the way Linux's 8250 driver does.
final class Guest8250 {
    let c: VFIOUserClient
    let intx = eventfd()
    var interrupts: UInt64 = 0

    init(_ c: VFIOUserClient) { self.c = c }
    deinit { close(intx) }

    func inb(_ port: UInt32, _ reg: UInt64) throws -> UInt8 { try c.read8(region: port, offset: reg) }
    func outb(_ port: UInt32, _ reg: UInt64, _ v: UInt8) throws { try c.write8(region: port, offset: reg, v) }

    /// Several reads in flight at once (one sendmsg), replies in order.
    func pipelinedReads(_ port: UInt32, _ regs: [UInt64]) throws -> [UInt8] {
        var batch: [UInt8] = []
        var ids: [UInt16] = []
        for reg in regs {
            let id = c.nextMessageID()
            ids.append(id)
            batch += rawMessage(id: id, command: Command.regionRead.rawValue, payload: le64(reg) + le32(port) + le32(1))
        }
        try c.sendRaw(batch)
        return try ids.map { id in
            let r = try c.receiveMessage()
            guard r.header.messageID == id, !r.header.isError, r.payload.count == 17 else { throw ClientError.malformed("pipelined read") }
            return r.payload[16]
        }
    }

    /// Several THR writes in flight at once.
    func pipelinedWrites(_ port: UInt32, _ bytes: ArraySlice<UInt8>) throws {
        var batch: [UInt8] = []
        var ids: [UInt16] = []
        for b in bytes {
            let id = c.nextMessageID()
            ids.append(id)
            batch += rawMessage(id: id, command: Command.regionWrite.rawValue, payload: le64(0) + le32(port) + le32(1) + [b])
        }
        try c.sendRaw(batch)
        for id in ids {
            let r = try c.receiveMessage()
            guard r.header.messageID == id, !r.header.isError else { throw ClientError.malformed("pipelined write") }
        }
    }

    /// autoconfig: scratch test, FIFO detection via IIR, FIFO size via loopback.
    func probe(_ port: UInt32) throws -> (is16550A: Bool, fifoSize: Int) {
        try outb(port, 7, 0xa5); let s1 = try inb(port, 7)
        try outb(port, 7, 0x5a); let s2 = try inb(port, 7)
        guard s1 == 0xa5, s2 == 0x5a else { return (false, 0) }
        try outb(port, 1, 0)
        guard try inb(port, 1) == 0 else { return (false, 0) }
        try outb(port, 2, 0x01)
        let is16550A = try inb(port, 2) & 0xc0 == 0xc0
        // size_fifo(): loopback, clear FIFOs, send 20 bytes, count what comes back.
        try outb(port, 4, 0x10)
        try outb(port, 2, 0x07)
        try outb(port, 3, 0x80); try outb(port, 0, 1); try outb(port, 1, 0); try outb(port, 3, 0x03)
        for i in 0..<20 { try outb(port, 0, UInt8(i)) }
        var count = 0
        while try inb(port, 5) & 0x01 != 0 { _ = try inb(port, 0); count += 1 }
        try outb(port, 4, 0)
        return (is16550A, count)
    }

    /// serial8250_startup + set_termios: 115200 8N1, FIFO trigger 8, DTR|RTS|OUT2, RX interrupts.
    func startup(_ port: UInt32) throws {
        try outb(port, 2, 0x07)
        try outb(port, 3, 0x80); try outb(port, 0, 1); try outb(port, 1, 0); try outb(port, 3, 0x03)
        try outb(port, 2, 0x81)
        try outb(port, 4, 0x0b)
        _ = try inb(port, 5); _ = try inb(port, 0); _ = try inb(port, 2); _ = try inb(port, 6)
        try outb(port, 1, 0x05)
    }

    /// Transfers `data[port]` through each port with interrupts, as the
    /// 8250 ISR would, and returns what each port received.
    func transfer(_ data: [[UInt8]]) throws -> [[UInt8]] {
        var sent = [Int](repeating: 0, count: data.count)
        var received = [[UInt8]](repeating: [], count: data.count)
        for p in 0..<data.count { try outb(UInt32(p), 1, 0x07) } // start_tx: THRI on
        var idle = 0
        while received.enumerated().contains(where: { $0.element.count < data[$0.offset].count }) {
            let n = waitSignal(intx, ms: 1000)
            if n == 0 {
                idle += 1
                if idle > 5 { throw ClientError.malformed("no interrupt for 5 s: sent \(sent), received \(received.map(\.count))") }
                continue
            }
            interrupts += n
            // One pass over the ports sharing the line per interrupt; anything
            // still pending re-fires at unmask (level-triggered INTx).
            do {
                for p in 0..<data.count {
                    let port = UInt32(p)
                    let iir = try inb(port, 2)
                    if iir & 0x01 != 0 { continue }
                    var lsr = try inb(port, 5)
                    if lsr & 0x01 != 0 {
                        // serial8250_rx_chars: RBR then LSR until DR clears (pipelined).
                        let replies = try pipelinedReads(port, Array(repeating: [UInt64(0), 5], count: 16).flatMap { $0 })
                        for k in stride(from: 0, to: replies.count, by: 2) {
                            received[p].append(replies[k])
                            lsr = replies[k + 1]
                            if lsr & 0x01 == 0 { break }
                        }
                    }
                    if lsr & 0x20 != 0 {
                        // serial8250_tx_chars: up to 16 bytes, then stop THRI when done.
                        if sent[p] < data[p].count {
                            let n = min(16, data[p].count - sent[p])
                            try pipelinedWrites(port, data[p][sent[p]..<(sent[p] + n)])
                            sent[p] += n
                        } else {
                            try outb(port, 1, 0x05)
                        }
                    }
                }
            }
            // QEMU unmasks INTx after the guest's next BAR access.
            try c.setIRQs(index: 0, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        }
        return received
    }
}

@Suite("mtty over vfio-user, as the Linux 8250 driver uses it")
struct MTTYServerTests {
    @Test func autoconfigSeesA16550AWithA16ByteFIFO() throws {
        let s = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        let guest = Guest8250(try s.connect())
        let result = try guest.probe(0)
        #expect(result.is16550A)
        #expect(result.fifoSize == 16)
    }

    @Test func sixtyFourKiBThroughBothPortsWithInterrupts() throws {
        let s = try LiveServer(try MTTY(ports: 2), type: "mtty-2")
        let c = try s.connect()
        let guest = Guest8250(c)
        let info = try c.deviceInfo()
        #expect(info.supportsReset)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [guest.intx])
        for p: UInt32 in [0, 1] {
            let probe = try guest.probe(p)
            #expect(probe.is16550A && probe.fifoSize == 16)
            try guest.startup(p)
        }
        _ = waitSignal(guest.intx, ms: 50) // the probe's loopback may have raised the line
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        _ = drain(guest.intx)
        var rng = SystemRandomNumberGenerator()
        let data = (0..<2).map { _ in (0..<65536).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        let received = try guest.transfer(data)
        #expect(received[0] == data[0])
        #expect(received[1] == data[1])
        // Each interrupt moves one 16-byte burst on each port (both share
        // INTx), so 64 KiB takes one interrupt per burst, plus the start and
        // the receive-timeout tail.
        let bursts = UInt64(65536 / 16)
        #expect(guest.interrupts >= bursts)
        #expect(guest.interrupts <= bursts + 64)
    }

    @Test func unmaskReFiresAPendingInterrupt() throws {
        let s = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        let c = try s.connect()
        let guest = Guest8250(c)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [guest.intx])
        try guest.outb(0, 2, 0x01)
        try guest.outb(0, 1, 0x01)
        try guest.outb(0, 0, 0x41)          // echo: RX data, INTx fires and is automasked
        #expect(waitSignal(guest.intx) == 1)
        _ = try guest.inb(0, 0)             // condition cleared...
        try guest.outb(0, 0, 0x42)          // ...and raised again while masked
        #expect(waitSignal(guest.intx, ms: 100) == 0)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        #expect(waitSignal(guest.intx) == 1) // not lost
        _ = try guest.inb(0, 0)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        #expect(waitSignal(guest.intx, ms: 100) == 0) // nothing pending, nothing fired
    }

    @Test func migrationKeepsRegistersAndFIFOBytes() throws {
        let source = try LiveServer(try MTTY(ports: 2), type: "mtty-2")
        let a = try source.connect()
        let ga = Guest8250(a)
        try ga.startup(0); try ga.startup(1)
        try ga.outb(0, 7, 0x99)
        for b in Array("in flight".utf8) { try ga.outb(0, 0, b) }
        for b in Array("two".utf8) { try ga.outb(1, 0, b) }
        let regs: [UInt64] = [1, 3, 4, 5, 6, 7]
        let before = try (0..<2).map { p in try regs.map { try ga.inb(UInt32(p), $0) } }
        try a.setMigrationState(.stopCopy)
        let stream = try a.readMigrationData()
        try a.setMigrationState(.stop)

        let target = try LiveServer(try MTTY(ports: 2), type: "mtty-2")
        let b = try target.connect()
        try b.setMigrationState(.resuming)
        try b.writeMigrationData(stream)
        try b.setMigrationState(.running)
        let gb = Guest8250(b)
        let after = try (0..<2).map { p in try regs.map { try gb.inb(UInt32(p), $0) } }
        #expect(after == before)
        #expect(try (0..<9).map { _ in try gb.inb(0, 0) } == Array("in flight".utf8))
        #expect(try (0..<3).map { _ in try gb.inb(1, 0) } == Array("two".utf8))

        // Another type, or a corrupted version, is refused with EINVAL.
        let other = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        let o = try other.connect()
        try o.setMigrationState(.resuming)
        try o.writeMigrationData(stream)
        #expect(throws: ClientError.remote(EINVAL)) { try o.setMigrationState(.stop) }
    }

    @Test func ptyBackendCarriesBytesBothWays() throws {
        let device = try MTTY(ports: 1, backends: [.pty])
        let path = try #require(device.backendNames[0])
        let s = try LiveServer(device, type: "mtty-1")
        let c = try s.connect()
        let guest = Guest8250(c)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [guest.intx])
        try guest.startup(0)
        let pty = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK)
        #expect(pty >= 0)
        defer { close(pty) }
        _ = umdev_make_raw(pty)
        // Guest → host
        for b in Array("hello host".utf8) { try guest.outb(0, 0, b) }
        var got: [UInt8] = []
        // Each wait is for the next bytes to arrive, however slowly the machine goes.
        while got.count < 10, pollFor(pty, seconds: 20) & Int16(POLLIN) != 0 {
            var buf = [UInt8](repeating: 0, count: 64)
            let n = read(pty, &buf, 64)
            if n > 0 { got += buf[0..<n] } else if n == 0 || errno != EAGAIN { break }
        }
        #expect(got == Array("hello host".utf8))
        // Host → guest, with an interrupt (below the trigger level: the receive timeout).
        let msg = Array("hi!".utf8)
        #expect(write(pty, msg, msg.count) == msg.count)
        #expect(waitSignal(guest.intx) == 1)
        #expect(try guest.inb(0, 2) & 0x0f == 0x0c) // character timeout
        var rx: [UInt8] = []
        while try guest.inb(0, 5) & 0x01 != 0 { rx.append(try guest.inb(0, 0)) }
        #expect(rx == msg)
    }
}

@Suite("mtty host lines through the endpoint")
struct MTTYEndpointHostLineTests {
    /// A THR write only queues its byte; the endpoint asks the device's
    /// poll set afresh before each wait, so the next poll has POLLOUT for
    /// the line and the bytes go out then, after the replies.
    @Test func queuedOutputGoesOutOnTheEndpointsNextPoll() throws {
        let path = socketPath("line")
        let device = try MTTY(ports: 1, backends: [.unixSocket(path)])
        let peer = try UnixSocket.connect(path: path).release().rawValue
        defer { close(peer) }
        let m = MemoryPeer(device, type: "mtty-1")
        try m.negotiate() // the same pass accepts the waiting peer
        // Ten THR writes in one read, as a client posting them would send.
        var batch: [UInt8] = []
        for (i, b) in "hello host".utf8.enumerated() {
            batch += rawMessage(id: UInt16(200 + i), command: Command.regionWrite.rawValue, payload: le64(0) + le32(0) + le32(1) + [b])
        }
        let replies = try m.exchange(batch)
        #expect(replies.count == 10 && replies.allSatisfy { $0.header.isReply && !$0.header.isError })
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = recv(peer, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        #expect(Array(buffer[0..<max(0, n)]) == Array("hello host".utf8))
        #expect(try m.read(region: 0, offset: 5, count: 1) == 0x60) // THRE | TEMT
    }
}

@Suite("mtty across reconnects")
struct MTTYReconnectTests {
    @Test func anInterruptPendingAtDisconnectReachesTheNextClient() throws {
        let s = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        do {
            let c = try s.connect()
            try c.write8(region: 0, offset: 1, 0x01) // RX interrupts
            try c.write8(region: 0, offset: 0, 0x33) // echo: line asserted, nobody listening
        }
        let c = try s.connect()
        let fd = eventfd()
        defer { close(fd) }
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [fd])
        #expect(waitSignal(fd) == 1)
        #expect(try c.read8(region: 0, offset: 0) == 0x33)
    }
}
