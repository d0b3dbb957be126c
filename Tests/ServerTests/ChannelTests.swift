import CShim
import Glibc
import TestDevice
import Testing
import VFIOUser
import VFIOUserServer

/// Whether `fd` is an open descriptor.
/// A descriptor whose closing can be seen from outside: one end of a
/// socketpair. Checking the number itself would race with other tests'
/// threads, which may be handed the same number as soon as it is closed.
private final class Watched {
    let fd: Int32
    private let peer: Int32
    init() {
        var pair: [Int32] = [-1, -1]
        // Close-on-exec: a child another test spawns meanwhile must not hold it open.
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        fd = pair[0]
        peer = pair[1]
    }
    deinit { close(peer) }
    /// Whether every copy of `fd` is closed: the peer sees the hang-up.
    var isClosed: Bool {
        var p = pollfd(fd: peer, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLHUP) != 0
    }
}

/// Feeds `bytes` with `fds` to `framer` as one read; all must fit.
private func feed(_ framer: MessageFramer, _ bytes: [UInt8], fds: [Int32] = []) {
    let n = bytes.withUnsafeBytes { framer.append($0, fds: fds) }
    #expect(n == bytes.count)
}

/// The framer's rules, with no socket: bytes and descriptors in, messages out.
@Suite("Message framer")
struct FramerTests {
    @Test func aMessageSplitAcrossReadsComesOutOnceWhole() throws {
        let framer = MessageFramer()
        let m = rawMessage(id: 3, command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0))
        feed(framer, Array(m[0..<5]))
        #expect(try framer.next() == nil)
        feed(framer, Array(m[5..<20]))
        #expect(try framer.next() == nil)
        feed(framer, Array(m[20...]))
        let got = try #require(try framer.next())
        #expect(got.header.messageID == 3 && got.header.command == 4 && got.payload.count == 16)
        #expect(Array(got.payload) == Array(m[16...]))
        #expect(try framer.next() == nil)
    }

    @Test func descriptorsBelongToTheLastMessageStartingInTheirRead() throws {
        let framer = MessageFramer()
        let fdw = Watched(), fd = fdw.fd
        feed(framer, rawMessage(id: 1, command: 4) + rawMessage(id: 2, command: 2), fds: [fd])
        let first = try #require(try framer.next())
        #expect(first.header.messageID == 1 && first.fdCount == 0)
        let second = try #require(try framer.next())
        #expect(second.header.messageID == 2 && second.fdCount == 1 && framer.fds[0] == fd)
        framer.closeFDs()
        #expect(fdw.isClosed)
    }

    @Test func descriptorsArrivingMidMessageBelongToTheMessageInProgress() throws {
        let framer = MessageFramer()
        let m = rawMessage(id: 1, command: 4)
        feed(framer, Array(m[0..<8]))
        let fdw = Watched(), fd = fdw.fd
        feed(framer, Array(m[8...]), fds: [fd])
        let got = try #require(try framer.next())
        #expect(got.fdCount == 1 && framer.fds[0] == fd)
        framer.closeFDs()
        #expect(fdw.isClosed)
    }

    @Test func descriptorsLeftUnclaimedByANewerReadAreClosed() throws {
        let framer = MessageFramer()
        let a = rawMessage(id: 1, command: 4), b = rawMessage(id: 2, command: 4), c = rawMessage(id: 3, command: 4)
        let oldw = Watched(), old = oldw.fd, new = eventfd()
        feed(framer, a + Array(b[0..<4]), fds: [old])
        feed(framer, Array(b[4...]) + c, fds: [new])
        #expect(oldw.isClosed, "a read's descriptors go to the last message starting in it; the older ones are dropped")
        #expect(try framer.next()?.fdCount == 0)
        #expect(try framer.next()?.fdCount == 0)
        let third = try #require(try framer.next())
        #expect(third.fdCount == 1 && framer.fds[0] == new)
        framer.closeFDs()
    }

    @Test func anOversizedMessageIsRefusedAndSkippedAndTheStreamGoesOn() throws {
        let framer = MessageFramer(maxMessageSize: 64)
        let big = rawMessage(id: 1, command: 9, payload: [UInt8](repeating: 0xaa, count: 84))
        let next = rawMessage(id: 2, command: 4)
        feed(framer, Array(big[0..<40]))
        let refused = try #require(try framer.next())
        #expect(refused.oversized && refused.header.messageID == 1 && refused.payload.count == 0)
        #expect(try framer.next() == nil)
        feed(framer, Array(big[40...]) + next)
        let after = try #require(try framer.next())
        #expect(after.header.messageID == 2 && !after.oversized)
    }

    @Test func aSizeBelowTheHeaderIsAFramingError() {
        let framer = MessageFramer()
        feed(framer, rawMessage(command: 4, size: 8))
        #expect(throws: TransportEnd.self) { _ = try framer.next() }
    }

    @Test func tooManyDescriptorsAreAllClosedAndFlagged() throws {
        let framer = MessageFramer(maxFDs: 2)
        let watched = (0..<3).map { _ in Watched() }
        let fds = watched.map(\.fd)
        feed(framer, rawMessage(id: 5, command: 6), fds: fds)
        let got = try #require(try framer.next())
        #expect(got.fdOverflow && got.fdCount == 0)
        for w in watched { #expect(w.isClosed) }
    }

    @Test func aFramerTakenApartMidMessageIsRebuiltAndTheNextMessagesComeOutIntact() throws {
        let framer = MessageFramer()
        let fdw = Watched(), fd = fdw.fd
        let a = rawMessage(id: 1, command: 4, payload: le32(16) + [UInt8](repeating: 1, count: 12))
        let b = rawMessage(id: 2, command: 6, payload: [UInt8](repeating: 2, count: 40))
        // a whole, and the first 20 bytes of b with b's descriptor.
        feed(framer, a + Array(b[0..<20]), fds: [fd])
        #expect(try framer.next()?.header.messageID == 1)
        #expect(try framer.next() == nil)
        let state = framer.takeState()
        #expect(state.bytes == Array(b[0..<20]) && state.pendingFDs == [fd] && state.pendingFDOwner == 0)
        #expect(!fdw.isClosed, "the descriptor travels with the state")

        let rebuilt = try MessageFramer(resuming: state)
        feed(rebuilt, Array(b[20...]) + rawMessage(id: 3, command: 2))
        let second = try #require(try rebuilt.next())
        #expect(second.header.messageID == 2 && Array(second.payload) == Array(b[16...]))
        #expect(second.fdCount == 1 && rebuilt.fds[0] == fd)
        #expect(try rebuilt.next()?.header.messageID == 3)
        rebuilt.closeFDs()
        #expect(fdw.isClosed)
    }

    @Test func aStateThatCannotBeAFramersIsRefusedAndItsDescriptorsClosed() {
        let fdw = Watched(), fd = fdw.fd
        let bad = MessageFramer.State(bytes: [UInt8](repeating: 0, count: 64 << 20), pendingFDs: [fd],
                                      pendingFDOwner: 0, pendingOverflow: false, discard: 0)
        #expect(throws: TransportEnd.self) { _ = try MessageFramer(resuming: bad) }
        #expect(fdw.isClosed)
    }
}

@Suite("Channels")
struct ChannelTests {
    /// The socket is given up with the bytes already read: the rebuilt
    /// transport reads on from the same descriptor, nothing read twice.
    @Test func aSocketTransportTakenApartMidStreamIsRebuiltFromItsState() throws {
        var sv: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0)
        defer { close(sv[0]); close(sv[1]) }
        let a = rawMessage(id: 1, command: 4)
        let b = rawMessage(id: 2, command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0))
        let first = a + Array(b[0..<10])
        #expect(first.withUnsafeBytes { Glibc.write(sv[1], $0.baseAddress, $0.count) } == first.count)
        let t = Transport(channel: SocketChannel(socket: sv[0]), framer: MessageFramer())
        #expect(try t.receive()?.header.messageID == 1)
        let (channel, state) = t.takeApart()
        #expect(channel.socket == sv[0] && state.bytes == Array(b[0..<10]))

        let again = try Transport(channel: channel, resuming: state)
        let rest = Array(b[10...]) + rawMessage(id: 3, command: 2)
        #expect(rest.withUnsafeBytes { Glibc.write(sv[1], $0.baseAddress, $0.count) } == rest.count)
        let m = try #require(try again.receive())
        #expect(m.header.messageID == 2 && Array(m.payload) == Array(b[16...]))
        #expect(try again.receive()?.header.messageID == 3)
    }

    @Test func anEndpointOverMemoryAnswersEachRequestOnce() throws {
        let peer = MemoryPeer(try TestDevice())
        #expect(try peer.errnoOf(rawMessage(command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0))) == EINVAL,
                "VERSION must come first")
        try peer.negotiate()
        #expect(try peer.write(region: 0, offset: TestDevice.Register.scratch, count: 4, value: 0xdead_beef) == 0)
        #expect(try peer.read(region: 0, offset: TestDevice.Register.scratch, count: 4) == 0xdead_beef)
        // Two requests in one read: two replies, in order, from one read.
        let reads = peer.channel.reads
        let two = rawMessage(id: 50, command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0))
            + rawMessage(id: 51, command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0))
        let sent = try peer.exchange(two)
        #expect(sent.map(\.header.messageID) == [50, 51])
        #expect(peer.channel.reads == reads + 1)
        peer.channel.close()
        #expect(throws: TransportEnd.self) { try peer.endpoint.serveUntilIdle() }
    }

    /// An in-memory endpoint taken apart with half a request buffered, and a
    /// new one built from the channel and state, answers it.
    @Test func anInMemoryConnectionTakenApartWithAPartialRequestIsRebuilt() throws {
        let peer = MemoryPeer(try TestDevice())
        try peer.negotiate()
        let req = rawMessage(id: 9, command: 10, payload: le64(TestDevice.Register.scratch) + le32(0) + le32(4))
        #expect(try peer.exchange(Array(req[0..<11])).isEmpty)
        let (channel, state) = peer.endpoint.transport.takeApart()
        #expect(state.bytes == Array(req[0..<11]))
        let t = try Transport(channel: channel, resuming: state)
        channel.push(Array(req[11...]))
        let m = try #require(try t.receive(nonBlocking: true))
        #expect(m.header.messageID == 9 && Array(m.payload) == Array(req[16...]))
    }
}
