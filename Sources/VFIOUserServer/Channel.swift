import CShim
import Glibc
import PCI
import VFIOUser

/// A monotonic clock in nanoseconds, injected so tests can drive time.
public protocol MonotonicClock {
    /// Nanoseconds since an arbitrary fixed point; never goes back.
    func nanoseconds() -> UInt64
}

/// CLOCK_MONOTONIC.
public struct SystemClock: MonotonicClock {
    public init() {}
    @inline(__always)
    public func nanoseconds() -> UInt64 { monotonicNanoseconds() }
}

/// A clock that moves only when the test says so.
public final class ManualClock: MonotonicClock {
    /// The current time (ns).
    public var now: UInt64
    public init(now: UInt64 = 1_000_000_000) { self.now = now }
    public func nanoseconds() -> UInt64 { now }
    /// Moves the clock forward by `ns`.
    public func advance(by ns: UInt64) { now += ns }
}

/// Where messages come from and replies go: the seam between the endpoint
/// and the kernel (after swift-nio's Channel and libvfio-user's
/// transport_ops). The framer decides where messages begin and end; a
/// channel only moves bytes and descriptors.
public protocol MessageChannel: AnyObject {
    /// Reads what is available into `framer` (one read). Returns false when
    /// `nonBlocking` and nothing is there. Throws `.closed` at the end of
    /// the stream, `.idle` when a channel that cannot block has nothing.
    func fill(_ framer: MessageFramer, nonBlocking: Bool) throws(TransportEnd) -> Bool

    /// Sends `bytes` and `fds` as one message (the descriptors stay the caller's).
    func send(_ bytes: UnsafeRawBufferPointer, fds: UnsafeBufferPointer<Int32>) throws(TransportEnd)

    /// The descriptor to poll for input, or -1 when the channel has none
    /// (poll ignores negative descriptors).
    var pollDescriptor: Int32 { get }

    /// Waits until an entry of `set` is ready or `timeout` ns pass (-1: no
    /// limit); `set[0]` is this channel's entry. Returns what poll returns.
    func wait(_ set: UnsafeMutableBufferPointer<pollfd>, timeout: Int64) throws(TransportEnd) -> Int32

    /// How long the peer may leave replies unread before sends give up (ns).
    var stallLimit: UInt64 { get }
}

// MARK: Socket

/// A connected UNIX stream socket: one `recvmsg` per fill, one `sendmsg`
/// per reply. The channel does not own the socket (the server closes it);
/// `release` says so in the type of its result.
public final class SocketChannel: MessageChannel {
    public let socket: Int32
    public let stallLimit: UInt64

    public init(socket: Int32, stallLimit: UInt64 = 5_000_000_000) {
        self.socket = socket
        self.stallLimit = stallLimit
    }

    public var pollDescriptor: Int32 { socket }

    @inline(__always)
    public func fill(_ framer: MessageFramer, nonBlocking: Bool) throws(TransportEnd) -> Bool {
        var nfds: Int32 = 0
        var truncated: Int32 = 0
        let space = framer.readSpace
        let n = framer.withFDSpace { room -> Int in
            umdev_recvmsg_once(socket, space.baseAddress!, space.count, nonBlocking ? umdev_msg_dontwait() : 0,
                          room.baseAddress!, Int32(room.count), &nfds, &truncated)
        }
        if n < 0 {
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { return false }
            if e == EINTR { throw .interrupted }
            throw .io(e)
        }
        if n == 0 {
            framer.closedWith(fdCount: Int(nfds))
            throw .closed
        }
        framer.received(byteCount: n, fdCount: Int(nfds), truncated: truncated != 0)
        return true
    }

    /// Sends `bytes` and `fds` in one sendmsg, finishing with further writes
    /// if the kernel took only part. A client whose socket buffer stays full
    /// (it stopped reading replies) for `stallLimit` ends the connection
    /// with ETIMEDOUT.
    @inline(__always)
    public func send(_ bytes: UnsafeRawBufferPointer, fds: UnsafeBufferPointer<Int32>) throws(TransportEnd) {
        var sent = 0
        var first = true
        var stalledSince: UInt64 = 0
        while sent < bytes.count {
            let n = umdev_sendmsg(socket, bytes.baseAddress! + sent, bytes.count - sent,
                                  first ? fds.baseAddress : nil, first ? Int32(fds.count) : 0)
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                guard e == EAGAIN else { throw .io(e) }
                let now = monotonicNanoseconds()
                if stalledSince == 0 { stalledSince = now } else if now - stalledSince >= stallLimit { throw .io(ETIMEDOUT) }
                var p = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 100)
                continue
            }
            stalledSince = 0
            first = false
            sent += n
        }
    }

    public func wait(_ set: UnsafeMutableBufferPointer<pollfd>, timeout: Int64) throws(TransportEnd) -> Int32 {
        umdev_poll_ns(set.baseAddress, UInt(set.count), timeout)
    }
}

// MARK: In memory

/// A channel with no socket, for tests (after swift-nio's EmbeddedChannel):
/// the test pushes bytes and descriptors in, reads replies out and decides
/// when the stream ends. Each `push` is one read as the kernel would
/// deliver it: its descriptors arrive with its first byte. A fill with
/// nothing pushed throws `.idle`, which gives control back to the test.
public final class InMemoryChannel: MessageChannel {
    /// One message the server sent: its bytes and duplicates of its descriptors (the test closes them).
    public struct Sent {
        public var bytes: [UInt8]
        public var fds: [Int32]
        /// The header of the message.
        public var header: Header { bytes.withUnsafeBytes { Header($0.baseAddress!) } }
        /// The bytes after the header.
        public var payload: ArraySlice<UInt8> { bytes[Header.size...] }
    }

    private struct Read {
        var bytes: [UInt8]
        var fds: [Int32]
    }

    private var inbound: [Read] = []
    private var outbound: [Sent] = []
    private var ended = false
    /// Reads performed so far (one per fill that delivered bytes).
    public private(set) var reads = 0
    public let stallLimit: UInt64 = .max
    /// Asked when a read finds nothing pushed, before giving up with
    /// `.idle`: a client served on the same thread pushes what it has to
    /// say (its answer to the server's DMA_READ) and returns true.
    public var whenEmpty: (() -> Bool)?

    public init() {}

    /// Whether input waits, after asking `whenEmpty` when none does.
    private func hasInputOrAsk() -> Bool {
        if inbound.isEmpty, !ended, let ask = whenEmpty { _ = ask() }
        return !inbound.isEmpty
    }

    deinit {
        for r in inbound { for fd in r.fds { Glibc.close(fd) } }
        for s in outbound { for fd in s.fds { Glibc.close(fd) } }
    }

    /// Queues `bytes` (with `fds`, which the channel owns from here) as one read.
    public func push(_ bytes: [UInt8], fds: [Int32] = []) {
        precondition(!ended, "pushed after the end of the stream")
        inbound.append(Read(bytes: bytes, fds: fds))
    }

    /// Ends the stream once what was pushed has been read.
    public func close() { ended = true }

    /// Whether pushed bytes wait to be read.
    public var hasInput: Bool { !inbound.isEmpty }

    /// The messages sent since the last call, oldest first.
    public func takeSent() -> [Sent] {
        defer { outbound.removeAll() }
        return outbound
    }

    public var pollDescriptor: Int32 { -1 }

    public func fill(_ framer: MessageFramer, nonBlocking: Bool) throws(TransportEnd) -> Bool {
        guard hasInputOrAsk() else {
            if ended { throw .closed }
            if nonBlocking { return false }
            throw .idle
        }
        let r = inbound[0]
        let n = r.bytes.withUnsafeBytes { framer.append($0, fds: r.fds) }
        precondition(n > 0, "the framer had no room after asking for bytes")
        reads += 1
        if n == r.bytes.count { inbound.removeFirst() } else { inbound[0] = Read(bytes: Array(r.bytes[n...]), fds: []) }
        return true
    }

    public func send(_ bytes: UnsafeRawBufferPointer, fds: UnsafeBufferPointer<Int32>) throws(TransportEnd) {
        outbound.append(Sent(bytes: Array(bytes), fds: fds.map { dup($0) }))
    }

    /// Ready now or never: the channel's entry is readable when bytes (or
    /// the end) wait; the other descriptors (eventfds, device fds) are
    /// polled without waiting. When nothing is ready and no timeout is due,
    /// throws `.idle`: the test decides what happens next (push, advance its
    /// clock). A timeout is reported as expired at once; whether the timer is
    /// due is the endpoint's question to its clock.
    public func wait(_ set: UnsafeMutableBufferPointer<pollfd>, timeout: Int64) throws(TransportEnd) -> Int32 {
        var ready = Int32(0)
        set[0].revents = 0
        if set.count > 1 {
            let n = poll(set.baseAddress! + 1, nfds_t(set.count - 1), 0)
            if n < 0 { throw .io(errno) }
            ready = n
        }
        if hasInputOrAsk() || ended { set[0].revents = Int16(POLLIN); ready += 1 }
        if ready == 0 && timeout != 0 { throw .idle }
        return ready
    }
}
