import CShim
import Glibc
import PCI
import VFIOUser

/// Why a connection ended.
public enum TransportEnd: Error {
    /// The peer closed the socket.
    case closed
    /// The byte stream can no longer be split into messages.
    case framing(StaticString)
    /// A socket call failed.
    case io(Int32)
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

/// Message framing over a UNIX stream socket.
///
/// Receiving: one `recvmsg` fills as much of a reusable buffer as the kernel
/// has, and complete messages are handed out from it without further calls,
/// so a request that arrives whole costs exactly one `recvmsg`. The kernel
/// delivers a message's SCM_RIGHTS descriptors with the read that contains
/// its first byte and ends that read right after it, so descriptors belong to
/// the last message that starts within the read.
///
/// Sending: header, payload and descriptors leave in one `sendmsg`.
public final class Transport {
    public let socket: Int32
    private let buffer: UnsafeMutableRawBufferPointer
    /// Unconsumed bytes are buffer[start..<end].
    @exclusivity(unchecked) private var start = 0
    @exclusivity(unchecked) private var end = 0
    /// Descriptors waiting for their message: its offset in the buffer.
    @exclusivity(unchecked) private var pendingFDOwner = -1
    @exclusivity(unchecked) private var pendingFDs = [Int32](repeating: -1, count: Int(UMDEV_MAX_FDS))
    @exclusivity(unchecked) private var pendingFDCount = 0
    @exclusivity(unchecked) private var pendingOverflow = false
    /// Descriptors of the message last returned by `receive`.
    @exclusivity(unchecked) public private(set) var fds = [Int32](repeating: -1, count: Int(UMDEV_MAX_FDS))
    @exclusivity(unchecked) private var heldFDs = 0
    /// Bytes of an oversized message still to be discarded.
    @exclusivity(unchecked) private var discard = 0
    /// How long the peer may keep its receive buffer full before sends give up (ns).
    public let stallLimit: UInt64
    /// Most descriptors one message may carry.
    public let maxFDs: Int
    /// Largest message accepted whole.
    public let maxMessageSize: Int
    /// Outgoing message buffer, reused for every reply.
    public let sendBuffer: UnsafeMutableRawBufferPointer
    let deferred = DeferredQueue()

    public init(socket: Int32, maxMessageSize: Int = Limits.maxMessageSize, maxFDs: Int = Limits.maxMessageFDs,
                stallLimit: UInt64 = 5_000_000_000) {
        self.socket = socket
        self.stallLimit = stallLimit
        self.maxMessageSize = maxMessageSize
        self.maxFDs = maxFDs
        buffer = .allocate(byteCount: maxMessageSize + 4096, alignment: 16)
        sendBuffer = .allocate(byteCount: maxMessageSize + 4096, alignment: 16)
    }

    deinit {
        closeFDs()
        dropPending()
        buffer.deallocate()
        sendBuffer.deallocate()
    }

    /// True when a whole message is already buffered (no syscall needed).
    public var hasBufferedMessage: Bool {
        guard end - start >= Header.size else { return false }
        let size = Int(Header(buffer.baseAddress! + start).messageSize)
        return size < Header.size || size > maxMessageSize || end - start >= size
    }

    /// Closes the descriptors of the last message that the caller did not take.
    public func closeFDs() {
        guard heldFDs > 0 else { return }
        heldFDs = 0
        for i in 0..<fds.count where fds[i] >= 0 {
            Glibc.close(fds[i])
            fds[i] = -1
        }
    }

    /// Hands descriptor `i` of the last message to the caller (it will not be closed here).
    public func takeFD(_ i: Int) -> Int32 {
        let fd = fds[i]
        fds[i] = -1
        return fd
    }

    /// Keeps a copy of `message` (and takes its descriptors) to be returned
    /// again by `receive(includeDeferred: true)`.
    func deferMessage(_ message: InboundMessage) {
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: Header.size + message.payload.count, alignment: 16)
        message.header.store(to: bytes.baseAddress!)
        if message.payload.count > 0 {
            (bytes.baseAddress! + Header.size).copyMemory(from: message.payload.baseAddress!, byteCount: message.payload.count)
        }
        var kept: [Int32] = []
        for i in 0..<message.fdCount { kept.append(takeFD(i)) }
        deferred.items.append(Deferred(bytes: bytes, fds: kept))
    }

    /// Whether deferred messages wait to be handled.
    public var hasDeferred: Bool { !deferred.items.isEmpty }

    private func takeDeferred() -> InboundMessage {
        let d = deferred.items.removeFirst()
        deferred.current?.deallocate()
        deferred.current = d.bytes
        for (i, fd) in d.fds.enumerated() { fds[i] = fd }
        heldFDs = d.fds.count
        let header = Header(d.bytes.baseAddress!)
        return InboundMessage(header: header, payload: UnsafeRawBufferPointer(rebasing: d.bytes[Header.size...]),
                              fdCount: d.fds.count, fdOverflow: false, oversized: false)
    }

    /// Returns the next message, reading from the socket only when no whole
    /// message is buffered. `nonBlocking` returns nil instead of waiting.
    /// Deferred messages come first when `includeDeferred` is set.
    public func receive(nonBlocking: Bool = false, includeDeferred: Bool = true) throws(TransportEnd) -> InboundMessage? {
        closeFDs()
        if includeDeferred && !deferred.items.isEmpty { return takeDeferred() }
        while true {
            if discard > 0 {
                let n = min(discard, end - start)
                start += n
                discard -= n
                if discard == 0 { continue }
            } else if end - start >= Header.size {
                let header = Header(buffer.baseAddress! + start)
                let size = Int(header.messageSize)
                guard size >= Header.size else { throw .framing("message size below the 16-byte header") }
                if size > maxMessageSize {
                    // Refuse it but keep the connection: skip its bytes.
                    let owned = takePending(messageAt: start)
                    discard = size
                    return InboundMessage(header: header, payload: UnsafeRawBufferPointer(start: nil, count: 0),
                                          fdCount: owned.count, fdOverflow: owned.overflow, oversized: true)
                }
                if end - start >= size {
                    let owned = takePending(messageAt: start)
                    let payload = UnsafeRawBufferPointer(start: buffer.baseAddress! + start + Header.size, count: size - Header.size)
                    start += size
                    if start == end {
                        // Nothing buffered: descriptors still pending belong to no message.
                        start = 0; end = 0
                        if pendingFDCount > 0 || pendingOverflow { dropPending() }
                    }
                    return InboundMessage(header: header, payload: payload, fdCount: owned.count,
                                          fdOverflow: owned.overflow, oversized: false)
                }
            }
            // Need more bytes: make room, then read what the kernel has.
            if start > 0 && (discard > 0 || buffer.count - end < maxMessageSize) {
                let n = end - start
                if n > 0 { (buffer.baseAddress!).copyMemory(from: buffer.baseAddress! + start, byteCount: n) }
                if pendingFDOwner >= 0 { pendingFDOwner -= start }
                start = 0
                end = n
            }
            if discard > 0 && end == start { start = 0; end = 0 }
            if try !fill(nonBlocking: nonBlocking) { return nil }
        }
    }

    /// Moves pending descriptors to `fds` if they belong to the message at
    /// `offset`. When more arrived than a message may carry, they are all
    /// closed and `overflow` is set.
    @inline(__always)
    private func takePending(messageAt offset: Int) -> (count: Int, overflow: Bool) {
        guard pendingFDOwner == offset, pendingFDCount > 0 || pendingOverflow else { return (0, false) }
        return movePending()
    }

    private func movePending() -> (count: Int, overflow: Bool) {
        let n = pendingFDCount
        for i in 0..<n { fds[i] = pendingFDs[i]; pendingFDs[i] = -1 }
        heldFDs = n
        let overflow = pendingOverflow
        pendingFDCount = 0
        pendingOverflow = false
        pendingFDOwner = -1
        if overflow { closeFDs(); return (0, true) }
        return (n, false)
    }

    /// Closes descriptors that no message claimed.
    private func dropPending() {
        for i in 0..<pendingFDCount { Glibc.close(pendingFDs[i]); pendingFDs[i] = -1 }
        pendingFDCount = 0
        pendingOverflow = false
        pendingFDOwner = -1
    }

    /// Reads what the kernel has into the buffer. Returns false when a
    /// non-blocking read found nothing.
    private func fill(nonBlocking: Bool) throws(TransportEnd) -> Bool {
        var nfds: Int32 = 0
        var truncated: Int32 = 0
        let space = buffer.count - end
        let n = pendingFDs.withUnsafeMutableBufferPointer { scratch -> Int in
            // Receive into a scratch area after the pending ones.
            umdev_recvmsg(socket, buffer.baseAddress! + end, space, nonBlocking ? umdev_msg_dontwait() : 0,
                          scratch.baseAddress! + pendingFDCount, Int32(scratch.count - pendingFDCount), &nfds, &truncated)
        }
        if n < 0 {
            let e = errno
            if e == EAGAIN || e == EWOULDBLOCK { return false }
            throw .io(e)
        }
        if n == 0 {
            for i in 0..<Int(nfds) { Glibc.close(pendingFDs[pendingFDCount + i]) }
            throw .closed
        }
        if nfds > 0 || truncated != 0 {
            // Owner: the last message that starts before the new end.
            let owner = lastMessageStart(before: end + n)
            if pendingFDOwner >= 0 && pendingFDOwner != owner {
                // A previous message's descriptors never got claimed (its bytes
                // were malformed); drop them and keep the new ones.
                let old = pendingFDCount
                for i in 0..<old { Glibc.close(pendingFDs[i]) }
                for i in 0..<Int(nfds) { pendingFDs[i] = pendingFDs[old + i]; pendingFDs[old + i] = -1 }
                pendingFDCount = 0
                pendingOverflow = false
            }
            pendingFDOwner = owner
            pendingFDCount += Int(nfds)
            if truncated != 0 || pendingFDCount > maxFDs { pendingOverflow = true }
        }
        end += n
        return true
    }

    private func lastMessageStart(before limit: Int) -> Int {
        var b = start + (discard > 0 ? min(discard, end - start) : 0)
        var last = b
        while b < limit {
            last = b
            guard b + Header.size <= limit else { break }
            let size = Int(Header(buffer.baseAddress! + b).messageSize)
            guard size >= Header.size else { break }
            b += size
        }
        return last
    }

    // MARK: Sending

    /// Sends `length` bytes of `sendBuffer` and `fds` in one sendmsg.
    public func send(length: Int, fds: UnsafeBufferPointer<Int32> = UnsafeBufferPointer(start: nil, count: 0)) throws(TransportEnd) {
        try send(UnsafeRawBufferPointer(start: sendBuffer.baseAddress!, count: length), fds: fds)
    }

    /// Sends `bytes` and `fds` in one sendmsg, finishing with further writes
    /// if the kernel took only part. A client whose socket buffer stays full
    /// (it stopped reading replies) for `stallLimit` ends the connection
    /// with ETIMEDOUT.
    public func send(_ bytes: UnsafeRawBufferPointer, fds: UnsafeBufferPointer<Int32> = UnsafeBufferPointer(start: nil, count: 0)) throws(TransportEnd) {
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

    /// Writes a header-only error reply into the send buffer and sends it.
    /// Finishes `w` as the successful reply to `h` and sends it, with one
    /// descriptor when `fd` ≥ 0. Nothing is sent if `h` asked for no reply.
    public func reply(_ w: MessageWriter, to h: Header, fd: Int32 = -1) throws(TransportEnd) {
        guard h.wantsReply else { return }
        let n = w.finish(messageID: h.messageID, command: h.command, flags: Header.typeReply)
        guard fd >= 0 else { return try send(length: n) }
        var one = fd
        try withUnsafePointer(to: &one) { (p) throws(TransportEnd) in try send(length: n, fds: UnsafeBufferPointer(start: p, count: 1)) }
    }

    public func sendError(to h: Header, errno e: Int32) throws(TransportEnd) {
        Header(messageID: h.messageID, command: h.command, messageSize: UInt32(Header.size),
               flags: Header.typeReply | Header.errorFlag, error: UInt32(e)).store(to: sendBuffer.baseAddress!)
        try send(length: Header.size)
    }
}

// MARK: Deferred messages

extension Transport {
    /// A command that arrived while the server was waiting for the reply to
    /// its own DMA request: kept whole, with its descriptors, to be handled
    /// after that reply.
    struct Deferred {
        var bytes: UnsafeMutableRawBufferPointer
        var fds: [Int32]
    }
}

/// Storage for deferred messages, kept outside the class body so the hot
/// path's stored properties stay small.
final class DeferredQueue {
    @exclusivity(unchecked) var items: [Transport.Deferred] = []
    /// The message being handled from the queue (freed on the next take).
    @exclusivity(unchecked) var current: UnsafeMutableRawBufferPointer?

    deinit {
        current?.deallocate()
        for d in items { d.bytes.deallocate(); for fd in d.fds { close(fd) } }
    }
}
