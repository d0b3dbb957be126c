import CShim
import Descriptors
import Glibc
import PCI
import SystemPackage
import VFIOUser

/// Why a connection ended.
public enum TransportEnd: Error {
    /// The peer closed the socket.
    case closed
    /// The byte stream can no longer be split into messages.
    case framing(StaticString)
    /// A socket call failed.
    case io(Int32)
    /// A channel that cannot block (InMemoryChannel) has nothing more to
    /// give now: control goes back to whoever drives it.
    case idle
    /// A signal interrupted the wait for input (EINTR): nothing was read,
    /// the connection is intact. The server's own thread sends one to stop
    /// a session between messages for a live upgrade.
    case interrupted
}

/// One received message: its header, its payload (a view into the receive
/// buffer, valid until the next `receive`), and the descriptors that came
/// with it. `fdOverflow` is set when more descriptors arrived than a message
/// may carry (they have all been closed).
public struct InboundMessage {
    public var header: Header
    public var payload: UnsafeRawBufferPointer
    public var fdCount: Int
    public var fdOverflow: Bool
    /// A message whose size exceeds the limit: its bytes are being skipped.
    public var oversized: Bool
}

/// Messages over a channel: a `MessageFramer` cuts what the channel reads
/// into messages, the channel sends replies.
///
/// Receiving: one channel read (for a socket, one `recvmsg`) fills as much
/// of the framer's buffer as there is, and complete messages are handed out
/// from it without further calls, so a request that arrives whole costs
/// exactly one read.
///
/// Sending: header, payload and descriptors leave in one `sendmsg`.
public final class Transport<Channel: MessageChannel> {
    public let channel: Channel
    public let framer: MessageFramer
    /// Outgoing message buffer, reused for every reply.
    public let sendBuffer: UnsafeMutableRawBufferPointer
    let deferred = DeferredQueue()

    public init(channel: Channel, framer: MessageFramer) {
        self.channel = channel
        self.framer = framer
        sendBuffer = .allocate(byteCount: framer.maxMessageSize + 4096, alignment: 16)
    }

    deinit {
        sendBuffer.deallocate()
    }

    /// Continues a connection taken apart by `takeApart`: the same channel,
    /// the bytes and descriptors its framer had not handed out yet.
    public convenience init(channel: Channel, resuming state: MessageFramer.State,
                            maxMessageSize: Int = Limits.maxMessageSize, maxFDs: Int = Limits.maxMessageFDs) throws(TransportEnd) {
        self.init(channel: channel, framer: try MessageFramer(resuming: state, maxMessageSize: maxMessageSize, maxFDs: maxFDs))
    }

    /// Gives up the channel and what was read from it and not yet handled,
    /// at a message boundary (no deferred messages: those exist only while
    /// the server waits for its own DMA reply). The transport must not be
    /// used afterwards; the next one is built with `init(channel:resuming:)`.
    public func takeApart() -> (channel: Channel, state: MessageFramer.State) {
        precondition(deferred.items.isEmpty, "taken apart while waiting for a DMA reply")
        return (channel, framer.takeState())
    }

    /// Most descriptors one message may carry.
    public var maxFDs: Int { framer.maxFDs }
    /// Largest message accepted whole.
    public var maxMessageSize: Int { framer.maxMessageSize }

    /// True when a whole message is already buffered (no read needed).
    @inline(__always)
    public var hasBufferedMessage: Bool { framer.hasBufferedMessage }

    /// Closes the descriptors of the last message that the caller did not take.
    @inline(__always)
    public func closeFDs() { framer.closeFDs() }

    /// Hands descriptor `i` of the last message to the caller (nil: none there).
    public func takeFD(_ i: Int) -> OwnedDescriptor? { framer.takeFD(i) }

    /// Hands the first `count` descriptors of the last message to the caller, as one batch.
    public func takeFDs(_ count: Int) -> ReceivedDescriptors { framer.takeFDs(count) }

    /// Keeps a copy of `message` (and takes its descriptors) to be returned
    /// again by `receive(includeDeferred: true)`.
    func deferMessage(_ message: InboundMessage) {
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: Header.size + message.payload.count, alignment: 16)
        message.header.store(to: bytes.baseAddress!)
        if message.payload.count > 0 {
            (bytes.baseAddress! + Header.size).copyMemory(from: message.payload.baseAddress!, byteCount: message.payload.count)
        }
        // Held raw until the message is handled again: the transport owns them meanwhile.
        deferred.items.append(Deferred(bytes: bytes, fds: framer.releaseFDs(message.fdCount)))
    }

    /// Whether deferred messages wait to be handled.
    public var hasDeferred: Bool { !deferred.items.isEmpty }

    private func takeDeferred() -> InboundMessage {
        let d = deferred.items.removeFirst()
        deferred.current?.deallocate()
        deferred.current = d.bytes
        framer.hold(d.fds)
        let header = Header(d.bytes.baseAddress!)
        return InboundMessage(header: header, payload: UnsafeRawBufferPointer(rebasing: d.bytes[Header.size...]),
                              fdCount: d.fds.count, fdOverflow: false, oversized: false)
    }

    /// Returns the next message, reading from the channel only when no whole
    /// message is buffered. `nonBlocking` returns nil instead of waiting.
    /// Deferred messages come first when `includeDeferred` is set.
    @inline(__always)
    public func receive(nonBlocking: Bool = false, includeDeferred: Bool = true) throws(TransportEnd) -> InboundMessage? {
        framer.closeFDs()
        if includeDeferred && !deferred.items.isEmpty { return takeDeferred() }
        while true {
            if let m = try framer.next() { return m }
            if try !channel.fill(framer, nonBlocking: nonBlocking) { return nil }
        }
    }

    // MARK: Sending

    // MARK: Keeping state current (a crash-surviving device, issue 18)

    /// A request changed the device or the connection and the change is not
    /// saved yet: `saveBeforeReply` runs before its reply leaves, so that
    /// what a client saw answered is what a restarted process resumes.
    @exclusivity(unchecked) public var unsaved = false
    /// Saves the state (nil: nothing keeps it; `unsaved` is then ignored).
    public var saveBeforeReply: (() -> Void)?
    /// Records the bytes of a request about to change the device, and of
    /// those read after it, before it is handled: a process started after a
    /// crash before the state is saved handles them again.
    public var notePending: ((UnsafeRawBufferPointer) -> Void)?

    /// Runs `saveBeforeReply` if a change is unsaved; waits while the
    /// server's own DMA request has client messages deferred (the
    /// connection's state is not whole then).
    @inline(__always)
    public func saveIfUnsaved() {
        if unsaved { saveNow() }
    }

    @inline(never)
    private func saveNow() {
        guard deferred.items.isEmpty, let save = saveBeforeReply else { return }
        unsaved = false
        save()
    }

    /// Sends `length` bytes of `sendBuffer` and `fds` in one sendmsg.
    @inline(__always)
    public func send(length: Int, fds: UnsafeBufferPointer<Int32> = UnsafeBufferPointer(start: nil, count: 0)) throws(TransportEnd) {
        try channel.send(UnsafeRawBufferPointer(start: sendBuffer.baseAddress!, count: length), fds: fds)
    }

    /// Finishes `w` as the successful reply to `h` and sends it, with a
    /// copy of `fd` when there is one (the descriptor stays its owner's).
    /// Nothing is sent if `h` asked for no reply.
    @inline(__always)
    public func reply(_ w: MessageWriter, to h: Header, fd: FileDescriptor? = nil) throws(TransportEnd) {
        saveIfUnsaved()
        guard h.wantsReply else { return }
        let n = w.finish(messageID: h.messageID, command: h.command, flags: Header.typeReply)
        guard let fd else { return try send(length: n) }
        var one = fd.rawValue
        try withUnsafePointer(to: &one) { (p) throws(TransportEnd) in try send(length: n, fds: UnsafeBufferPointer(start: p, count: 1)) }
    }

    /// Writes a header-only error reply into the send buffer and sends it.
    public func sendError(to h: Header, errno e: Int32) throws(TransportEnd) {
        saveIfUnsaved()
        Header(messageID: h.messageID, command: h.command, messageSize: UInt32(Header.size),
               flags: Header.typeReply | Header.errorFlag, error: UInt32(e)).store(to: sendBuffer.baseAddress!)
        try send(length: Header.size)
    }
}

// MARK: Deferred messages

/// A command that arrived while the server was waiting for the reply to
/// its own DMA request: kept whole, with its descriptors, to be handled
/// after that reply.
struct Deferred {
    var bytes: UnsafeMutableRawBufferPointer
    var fds: [Int32]
}

/// Storage for deferred messages, kept outside the class body so the hot
/// path's stored properties stay small.
final class DeferredQueue {
    @exclusivity(unchecked) var items: [Deferred] = []
    /// The message being handled from the queue (freed on the next take).
    @exclusivity(unchecked) var current: UnsafeMutableRawBufferPointer?

    deinit {
        current?.deallocate()
        for d in items { d.bytes.deallocate(); for fd in d.fds { close(fd) } }
    }
}
