import CShim
import Glibc
import PCI
import Testing
import UnixSocket
@testable import MTTY

/// A THR write is a register access: it queues the byte for the host and
/// makes no syscall. The byte goes out when the owner thread services the
/// line's POLLOUT, which these tests do by hand, as the endpoint would.
@Suite("mtty host lines: output leaves on POLLOUT, not on the register access")
struct MTTYHostLineTests {
    func read(_ d: MTTY, _ region: Int, _ offset: UInt64) -> UInt8 {
        var out: UInt8 = 0
        _ = withUnsafeMutableBytes(of: &out) { d.read(region: region, offset: offset, into: $0) }
        return out
    }
    func write(_ d: MTTY, _ region: Int, _ offset: UInt64, _ byte: UInt8) {
        _ = withUnsafeBytes(of: byte) { d.write(region: region, offset: offset, data: $0) }
    }
    func events(_ d: MTTY, _ fd: Int32) -> Int16? { d.pollRequests().first { $0.fd == fd }?.events }

    @Test func aTHRWriteQueuesTheByteAndPOLLOUTDeliversIt() throws {
        let path = "/tmp/umdev-mtty-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let d = try MTTY(ports: 1, backends: [.unixSocket(path)])
        let peer = try UnixSocket.connect(path: path).release().rawValue
        defer { close(peer) }
        // The listener is readable: the owner thread accepts the peer.
        let listening = d.pollRequests()
        try #require(listening.count == 1 && listening[0].events == Int16(POLLIN))
        d.serviceEvent(fd: listening[0].fd, revents: Int16(POLLIN))
        let accepted = d.pollRequests()
        try #require(accepted.count == 1 && accepted[0].fd != listening[0].fd)
        let line = accepted[0].fd
        #expect(accepted[0].events == Int16(POLLIN)) // nothing queued: no POLLOUT

        for b in "hi".utf8 { write(d, 0, UInt64(UART16550.Register.data), b) }
        // A UNIX stream socket delivers at write(2): had the access written,
        // the peer would hold the bytes now.
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(recv(peer, &buffer, buffer.count, Int32(MSG_DONTWAIT)) == -1 && errno == EAGAIN)
        // The guest sees the transmitter empty at once, as it always did.
        #expect(read(d, 0, UInt64(UART16550.Register.lineStatus)) == UART16550.lsrTHREmpty | UART16550.lsrTransmitterEmpty)
        #expect(events(d, line) == Int16(POLLIN | POLLOUT))

        d.serviceEvent(fd: line, revents: Int16(POLLOUT))
        let n = recv(peer, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        #expect(Array(buffer[0..<max(0, n)]) == Array("hi".utf8))
        #expect(events(d, line) == Int16(POLLIN))
    }

    @Test func aSocketPeerThatLeftWithOutputQueuedIsClosedWithoutASignal() throws {
        let path = "/tmp/umdev-mtty-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let d = try MTTY(ports: 1, backends: [.unixSocket(path)])
        let peer = try UnixSocket.connect(path: path).release().rawValue
        let listener = try #require(d.pollRequests().first).fd
        d.serviceEvent(fd: listener, revents: Int16(POLLIN))
        let line = try #require(d.pollRequests().first).fd
        write(d, 0, UInt64(UART16550.Register.data), 0x78)
        close(peer)
        // The flush meets EPIPE (a SIGPIPE would end this process); the read sees the end.
        d.serviceEvent(fd: line, revents: Int16(POLLOUT | POLLHUP))
        #expect(d.pollRequests().map(\.fd) == [listener])
    }

    /// The guest is not reading (its receive FIFO full) when the socket peer
    /// leaves with output queued for it: the hang-up still closes the line,
    /// once, instead of coming back on every poll, and the next peer gets
    /// nothing meant for the last.
    @Test func aPeerThatLeavesWhileTheFIFOIsFullIsLetGo() throws {
        let path = "/tmp/umdev-mtty-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let d = try MTTY(ports: 1, backends: [.unixSocket(path)])
        let first = try UnixSocket.connect(path: path)
        let listener = try #require(d.pollRequests().first).fd
        d.serviceEvent(fd: listener, revents: Int16(POLLIN))
        let line = try #require(d.pollRequests().first).fd
        let twenty = [UInt8](repeating: 0x41, count: 20)
        #expect(Glibc.write(first.rawValue, twenty, twenty.count) == 20)
        d.serviceEvent(fd: line, revents: Int16(POLLIN))          // the receiver is full
        write(d, 0, UInt64(UART16550.Register.data), 0x78)        // queued for the peer
        #expect(events(d, line) == Int16(POLLOUT))                // no POLLIN: the FIFO is full
        _ = consume first
        d.serviceEvent(fd: line, revents: Int16(POLLOUT | POLLHUP))
        #expect(d.pollRequests().isEmpty, "the line is closed (the listener waits while the FIFO is full)")
        // The guest reads what it holds (one byte: its FIFO is not enabled).
        while read(d, 0, 5) & 0x01 != 0 { #expect(read(d, 0, UInt64(UART16550.Register.data)) == 0x41) }
        #expect(d.pollRequests().map(\.fd) == [listener], "the device listens again")
        let second = try UnixSocket.connect(path: path)
        d.serviceEvent(fd: listener, revents: Int16(POLLIN))
        let next = try #require(d.pollRequests().first)
        #expect(next.fd != listener && next.events == Int16(POLLIN), "nothing queued for the new peer")
        _ = second
    }

    /// A pty master whose slave nobody has open reports a hang-up on every
    /// poll; the server's thread, polling it, would spin at a full core
    /// while a client is attached. The line holds a slave of its own.
    @Test func aPtyNobodyOpenedIsQuietToPoll() throws {
        let d = try MTTY(ports: 1, backends: [.pty])
        var set = d.pollRequests().map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
        try #require(set.count == 1)
        #expect(poll(&set, nfds_t(set.count), 0) == 0, "revents \(set[0].revents)")
        // A user who opens the slave and leaves again does not make it hang up either.
        let user = open(try #require(d.backendNames[0]), O_RDWR | O_NOCTTY)
        try #require(user >= 0)
        close(user)
        set[0].revents = 0
        #expect(poll(&set, nfds_t(set.count), 0) == 0, "revents \(set[0].revents)")
    }

    @Test func aPtyNobodyReadsStallsNoAccessAndLosesNothingThatFits() throws {
        let d = try MTTY(ports: 1, backends: [.pty])
        let sink = SpySink()
        d.interrupts = sink
        let slave = open(try #require(d.backendNames[0]), O_RDWR | O_NOCTTY | O_NONBLOCK)
        try #require(slave >= 0)
        defer { close(slave) }
        _ = umdev_make_raw(slave)
        let line = try #require(d.pollRequests().first).fd
        write(d, 0, UInt64(UART16550.Register.interruptEnable), UART16550.ierTransmitEmpty)

        func pattern(_ i: Int) -> UInt8 { UInt8(truncatingIfNeeded: i &* 31 &+ i >> 8) }
        func hostTakesMore() -> Bool {
            var p = pollfd(fd: line, events: Int16(POLLOUT), revents: 0)
            return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLOUT) != 0
        }
        // The reader never reads: transmit, servicing POLLOUT between bursts
        // (well under the queue limit), until the pty takes no more.
        var sent: [UInt8] = []
        while hostTakesMore() {
            try #require(sent.count < 1 << 22, "the pty never filled")
            for _ in 0..<4096 {
                let b = pattern(sent.count)
                write(d, 0, UInt64(UART16550.Register.data), b)
                sent.append(b)
            }
            d.serviceEvent(fd: line, revents: Int16(POLLOUT))
        }

        // The host is full. The guest still transmits, and every access
        // answers with what the UART says: THR empty, THRE interrupt raised.
        for b in "tail".utf8 {
            write(d, 0, UInt64(UART16550.Register.data), b)
            sent.append(b)
        }
        #expect(read(d, 0, UInt64(UART16550.Register.lineStatus)) == UART16550.lsrTHREmpty | UART16550.lsrTransmitterEmpty)
        #expect(sink.level)
        #expect(read(d, 0, UInt64(UART16550.Register.interruptIdentification)) == UART16550.iirTransmitEmpty)
        #expect(!sink.level)
        write(d, 0, UInt64(UART16550.Register.scratch), 0x5a)
        #expect(read(d, 0, UInt64(UART16550.Register.scratch)) == 0x5a)
        #expect(try #require(events(d, line)) & Int16(POLLOUT) != 0)

        // The reader drains; POLLOUT serviced as it comes delivers the rest,
        // in order, nothing lost. (The poll timeout only bounds a failure.)
        var got: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while got.count < sent.count {
            var set = [pollfd(fd: slave, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: line, events: try #require(events(d, line)), revents: 0)]
            try #require(poll(&set, 2, 5000) > 0, "stalled with \(got.count) of \(sent.count) bytes")
            if set[1].revents & Int16(POLLOUT) != 0 { d.serviceEvent(fd: line, revents: Int16(POLLOUT)) }
            let n = Glibc.read(slave, &buffer, buffer.count)
            if n > 0 { got += buffer[0..<n] }
        }
        #expect(got.count == sent.count)
        #expect(got == sent)
        #expect(events(d, line) == Int16(POLLIN))
    }
}
