import CShim
import Descriptors
import Glibc
import VFIOUser

/// Splits a byte stream with descriptors into vfio-user messages. No I/O:
/// a channel copies what it read into `readSpace` (and the descriptors into
/// `fdSpace`), reports it with `received`, and asks `next` for messages.
///
/// Rules (those of the socket transport, which reads this way):
/// - descriptors belong to the last message that starts within the read
///   that brought them (the kernel ends a read after the SCM_RIGHTS bytes);
///   descriptors no message claims are closed;
/// - a message larger than `maxMessageSize` is returned once, `oversized`,
///   and its bytes are skipped; the stream goes on;
/// - a size below the 16-byte header is a framing error;
/// - more descriptors than `maxFDs` (or a truncated control message): the
///   message comes out with `fdOverflow` and all of them are closed.
///
/// The only calls it makes are `close` on descriptors it owns and drops.
public final class MessageFramer {
    private let buffer: UnsafeMutableRawBufferPointer
    /// Unconsumed bytes are buffer[start..<end].
    @exclusivity(unchecked) private var start = 0
    @exclusivity(unchecked) private var end = 0
    /// Descriptors waiting for their message: its offset in the buffer.
    @exclusivity(unchecked) private var pendingFDOwner = -1
    private let pending = DescriptorSlots(count: Int(UMDEV_MAX_FDS))
    @exclusivity(unchecked) private var pendingFDCount = 0
    @exclusivity(unchecked) private var pendingOverflow = false
    /// Descriptors of the message last returned by `next`.
    private let held = DescriptorSlots(count: Int(UMDEV_MAX_FDS))
    /// Descriptors of the message last returned by `next`, as numbers (-1: none).
    public var fds: [Int32] { held.all }
    @exclusivity(unchecked) private var heldFDs = 0
    /// Bytes of an oversized message still to be discarded.
    @exclusivity(unchecked) private var discard = 0
    /// Most descriptors one message may carry.
    public let maxFDs: Int
    /// Largest message accepted whole.
    public let maxMessageSize: Int

    public init(maxMessageSize: Int = Limits.maxMessageSize, maxFDs: Int = Limits.maxMessageFDs) {
        self.maxMessageSize = maxMessageSize
        self.maxFDs = maxFDs
        buffer = .allocate(byteCount: maxMessageSize + 4096, alignment: 16)
    }

    deinit {
        closeFDs()
        dropPending()
        buffer.deallocate()
        pending.deallocate()
        held.deallocate()
    }

    /// True when a whole message (or a framing decision) is buffered.
    public var hasBufferedMessage: Bool {
        guard end &- start >= Header.size else { return false }
        let size = Int(Header(buffer.baseAddress! + start).messageSize)
        return size < Header.size || size > maxMessageSize || end &- start >= size
    }

    /// The bytes of `message` (the last one `next` returned) and of all
    /// buffered after it, as they arrived; nil when descriptors wait for a
    /// later message or the message is not in the buffer.
    public func bytes(from message: InboundMessage) -> UnsafeRawBufferPointer? {
        guard pendingFDCount == 0, !pendingOverflow, discard == 0, let payload = message.payload.baseAddress else { return nil }
        let base = UnsafeRawPointer(buffer.baseAddress!)
        let from = payload - Header.size, through = payload + message.payload.count
        // Only a message still in this buffer: a deferred one is a copy elsewhere.
        guard from >= base, through <= base + buffer.count else { return nil }
        // Bytes still buffered follow the message; with none, the buffer was emptied after it (end is 0).
        let upTo = end > 0 ? base + end : through
        guard upTo >= through else { return nil }
        return UnsafeRawBufferPointer(start: from, count: upTo - from)
    }

    /// Whether any byte is buffered and not yet handed out (a whole message or part of one).
    public var hasBufferedBytes: Bool { end > start || discard > 0 }

    /// Closes the descriptors of the last message that the caller did not take.
    /// Asked before every message; almost always there are none.
    @inline(__always)
    public func closeFDs() {
        if heldFDs > 0 { closeHeldFDs() }
    }

    @inline(never)
    private func closeHeldFDs() {
        heldFDs = 0
        for i in 0..<held.count where held[i] >= 0 {
            Glibc.close(held[i])
            held[i] = -1
        }
    }

    /// Hands descriptor `i` of the last message to the caller (nil: none there).
    public func takeFD(_ i: Int) -> OwnedDescriptor? {
        guard i >= 0 && i < held.count else { return nil }
        defer { held[i] = -1 }
        return OwnedDescriptor(adoptingRaw: held[i])
    }

    /// Hands the first `count` descriptors of the last message to the caller, as one batch.
    public func takeFDs(_ count: Int) -> ReceivedDescriptors { ReceivedDescriptors(adoptingRaw: releaseFDs(count)) }

    /// The first `count` descriptors of the last message, no longer the
    /// framer's: for a holder that keeps them raw (a deferred message).
    func releaseFDs(_ count: Int) -> [Int32] {
        var raw: [Int32] = []
        for i in 0..<min(count, held.count) { raw.append(held[i]); held[i] = -1 }
        return raw
    }

    /// Installs descriptors as those of the current message (a deferred
    /// message being handled again); the framer owns them from here.
    func hold(_ kept: [Int32]) {
        closeFDs()
        for (i, fd) in kept.enumerated() { held[i] = fd }
        heldFDs = kept.count
    }

    /// The next whole message, or nil when more bytes are needed (then
    /// `readSpace` has room for at least one whole message).
    @inline(__always)
    public func next() throws(TransportEnd) -> InboundMessage? {
        // Nothing buffered (the usual state between requests): all the room is free.
        if end == 0 && discard == 0 { return nil }
        while true {
            if discard > 0 {
                let n = min(discard, end - start)
                start += n
                discard -= n
                if discard == 0 { continue }
            // 0 ≤ start ≤ end ≤ buffer.count and sizes are checked against
            // what is buffered: the index arithmetic below cannot overflow.
            } else if end &- start >= Header.size {
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
                if end &- start >= size {
                    let owned = takePending(messageAt: start)
                    let payload = UnsafeRawBufferPointer(start: buffer.baseAddress! + start + Header.size, count: size &- Header.size)
                    start &+= size
                    if start == end {
                        // Nothing buffered: descriptors still pending belong to no message.
                        start = 0; end = 0
                        if pendingFDCount > 0 || pendingOverflow { dropPending() }
                    }
                    return InboundMessage(header: header, payload: payload, fdCount: owned.count,
                                          fdOverflow: owned.overflow, oversized: false)
                }
            }
            // Need more bytes: make room for them.
            if start > 0 && (discard > 0 || buffer.count - end < maxMessageSize) {
                let n = end - start
                if n > 0 { (buffer.baseAddress!).copyMemory(from: buffer.baseAddress! + start, byteCount: n) }
                if pendingFDOwner >= 0 { pendingFDOwner -= start }
                start = 0
                end = n
            }
            if discard > 0 && end == start { start = 0; end = 0 }
            return nil
        }
    }

    // MARK: Feeding

    /// Where the next read goes.
    @inline(__always)
    public var readSpace: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: buffer.baseAddress! + end, count: buffer.count - end)
    }

    /// Runs `body` with the room for the next read's descriptors.
    @inline(__always)
    public func withFDSpace<R>(_ body: (UnsafeMutableBufferPointer<Int32>) -> R) -> R {
        let used = pendingFDCount
        return body(pending.suffix(from: used))
    }

    /// Records a read of `byteCount` bytes into `readSpace` that brought
    /// `fdCount` descriptors into the descriptor space (`truncated`: the
    /// kernel had more than fitted). `byteCount` must be > 0.
    @inline(__always)
    public func received(byteCount n: Int, fdCount nfds: Int, truncated: Bool) {
        if nfds > 0 || truncated {
            // Owner: the last message that starts before the new end.
            let owner = lastMessageStart(before: end + n)
            if pendingFDOwner >= 0 && pendingFDOwner != owner {
                // A previous message's descriptors never got claimed (its bytes
                // were malformed); drop them and keep the new ones.
                let old = pendingFDCount
                for i in 0..<old { Glibc.close(pending[i]) }
                for i in 0..<nfds { pending[i] = pending[old + i]; pending[old + i] = -1 }
                pendingFDCount = 0
                pendingOverflow = false
            }
            pendingFDOwner = owner
            pendingFDCount += nfds
            if truncated || pendingFDCount > maxFDs { pendingOverflow = true }
        }
        end += n
    }

    /// The peer closed the stream; descriptors that came with the final
    /// read (`fdCount` of them in the descriptor space) are closed.
    public func closedWith(fdCount nfds: Int) {
        for i in 0..<nfds {
            Glibc.close(pending[pendingFDCount + i])
            pending[pendingFDCount + i] = -1
        }
    }

    /// Copies `bytes` (and `descriptors`, which the framer then owns) in as
    /// one read would deliver them; returns how many bytes fitted. Used by
    /// channels that do not read from a kernel; `bytes` must not be empty.
    public func append(_ bytes: UnsafeRawBufferPointer, fds descriptors: [Int32]) -> Int {
        let space = readSpace
        let n = min(space.count, bytes.count)
        guard n > 0 else { return 0 }
        space.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: n)
        let taken = withFDSpace { room -> Int in
            let k = min(room.count, descriptors.count)
            for i in 0..<k { room[i] = descriptors[i] }
            return k
        }
        for fd in descriptors[taken...] { Glibc.close(fd) }
        received(byteCount: n, fdCount: taken, truncated: taken < descriptors.count)
        return n
    }

    // MARK: Claiming descriptors

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
        for i in 0..<n { held[i] = pending[i]; pending[i] = -1 }
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
        for i in 0..<pendingFDCount { Glibc.close(pending[i]); pending[i] = -1 }
        pendingFDCount = 0
        pendingOverflow = false
        pendingFDOwner = -1
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

    // MARK: Taking apart and rebuilding

    /// What a framer holds between messages: the bytes read and not yet
    /// handed out, the descriptors still waiting for their message, and the
    /// rest of an oversized message still to skip. Issue 14 carries this
    /// across exec; nothing is read from the kernel again.
    public struct State {
        /// Buffered bytes, not yet returned as messages.
        public var bytes: [UInt8]
        /// Descriptors that arrived and wait for their message (owned by the holder of the state).
        public var pendingFDs: [Int32]
        /// Offset in `bytes` of the message those descriptors belong to.
        public var pendingFDOwner: Int
        /// More descriptors arrived than a message may carry.
        public var pendingOverflow: Bool
        /// Bytes of an oversized message still to be discarded.
        public var discard: Int

        public init(bytes: [UInt8], pendingFDs: [Int32], pendingFDOwner: Int, pendingOverflow: Bool, discard: Int) {
            self.bytes = bytes
            self.pendingFDs = pendingFDs
            self.pendingFDOwner = pendingFDOwner
            self.pendingOverflow = pendingOverflow
            self.discard = discard
        }
    }

    /// Gives up the buffered bytes and pending descriptors (the framer is
    /// empty afterwards). Descriptors of the current message are closed: the
    /// caller takes apart a framer only between messages.
    public func takeState() -> State {
        closeFDs()
        let state = snapshot()
        for i in 0..<pendingFDCount { pending[i] = -1 }
        pendingFDCount = 0
        pendingOverflow = false
        pendingFDOwner = -1
        start = 0; end = 0; discard = 0
        return state
    }

    /// What the framer holds, without giving it up: its descriptors stay
    /// the framer's (a live upgrade passes them across exec by number and
    /// keeps serving from this framer if the upgrade fails). Taken between
    /// messages, after the last message's descriptors were taken or closed.
    public func snapshot() -> State {
        State(bytes: Array(UnsafeRawBufferPointer(rebasing: buffer[start..<end])),
              pendingFDs: pending.prefix(pendingFDCount),
              pendingFDOwner: pendingFDOwner >= 0 ? pendingFDOwner - start : -1,
              pendingOverflow: pendingOverflow, discard: discard)
    }

    /// A framer that continues from `state` (it takes the descriptors). A
    /// state that cannot have come from a framer with these limits is
    /// refused, and its descriptors closed.
    public convenience init(resuming state: State, maxMessageSize: Int = Limits.maxMessageSize,
                            maxFDs: Int = Limits.maxMessageFDs) throws(TransportEnd) {
        self.init(maxMessageSize: maxMessageSize, maxFDs: maxFDs)
        guard state.bytes.count <= buffer.count, state.pendingFDs.count <= pending.count, state.discard >= 0,
              state.pendingFDOwner < max(state.bytes.count, 1), state.pendingFDOwner >= -1,
              state.pendingFDs.isEmpty || state.pendingFDOwner >= 0 else {
            for fd in state.pendingFDs { Glibc.close(fd) }
            throw .framing("saved channel state does not fit this framer")
        }
        state.bytes.withUnsafeBytes { b in
            if b.count > 0 { buffer.baseAddress!.copyMemory(from: b.baseAddress!, byteCount: b.count) }
        }
        end = state.bytes.count
        for (i, fd) in state.pendingFDs.enumerated() { pending[i] = fd }
        pendingFDCount = state.pendingFDs.count
        pendingOverflow = state.pendingOverflow
        pendingFDOwner = state.pendingFDs.isEmpty && !state.pendingOverflow ? -1 : state.pendingFDOwner
        discard = state.discard
    }
}

/// A fixed table of raw descriptor numbers (-1: empty) in memory of its
/// own: the framer's slots are touched on every read, and an array would
/// ask whether its buffer is shared before each write. Indices are checked.
struct DescriptorSlots {
    private let base: UnsafeMutablePointer<Int32>
    let count: Int

    init(count: Int) {
        self.count = count
        base = .allocate(capacity: count)
        base.initialize(repeating: -1, count: count)
    }

    func deallocate() { base.deallocate() }

    @inline(__always)
    subscript(i: Int) -> Int32 {
        get { precondition(i >= 0 && i < count, "descriptor slot out of range"); return base[i] }
        nonmutating set { precondition(i >= 0 && i < count, "descriptor slot out of range"); base[i] = newValue }
    }

    /// Slots `from...` as a buffer a read fills in place.
    @inline(__always)
    func suffix(from i: Int) -> UnsafeMutableBufferPointer<Int32> {
        precondition(i >= 0 && i <= count, "descriptor slot out of range")
        return UnsafeMutableBufferPointer(start: base + i, count: count - i)
    }

    /// The first `n` slots, copied.
    func prefix(_ n: Int) -> [Int32] { Array(UnsafeBufferPointer(start: base, count: min(max(n, 0), count))) }

    /// Every slot, copied.
    var all: [Int32] { prefix(count) }
}
