import CShim
import Descriptors
import Glibc
import UnixSocket
import VFIOUser

/// What went wrong on the client side.
public enum ClientError: Error, Equatable, CustomStringConvertible {
    /// A local system call failed.
    case system(Int32, String)
    /// The server answered with an error reply carrying this errno.
    case remote(Int32)
    /// The server's reply did not make sense.
    case malformed(String)
    /// The server closed the connection.
    case disconnected

    public var description: String {
        switch self {
        case .system(let e, let what): "\(what): \(String(cString: strerror(e)))"
        case .remote(let e): "server error: \(String(cString: strerror(e))) (errno \(e))"
        case .malformed(let why): "malformed reply: \(why)"
        case .disconnected: "server closed the connection"
        }
    }

    /// The errno of a `.remote` error, else nil.
    public var remoteErrno: Int32? { if case .remote(let e) = self { e } else { nil } }
}

/// A reply as received: header, payload and any descriptors (owned by the caller).
public struct Reply {
    public var header: Header
    public var payload: [UInt8]
    public var fds: [Int32]

    public init(header: Header, payload: [UInt8], fds: [Int32]) {
        self.header = header
        self.payload = payload
        self.fds = fds
    }

    public func u32(_ o: Int) -> UInt32 { payload.withUnsafeBytes { $0.u32(o) } }
    public func u64(_ o: Int) -> UInt64 { payload.withUnsafeBytes { $0.u64(o) } }
    public func u16(_ o: Int) -> UInt16 { payload.withUnsafeBytes { $0.u16(o) } }
}

/// Where a client's messages go when they do not cross a socket: a server
/// in the same process, served on the client's own thread (tests use one
/// over the server's in-memory channel, so nothing waits for a thread).
/// Descriptors follow sendmsg/recvmsg: those sent stay the sender's, those
/// received are the receiver's.
public protocol ClientWire: AnyObject {
    /// Delivers `bytes` and `fds` to the server, which answers before this returns.
    func send(_ bytes: UnsafeRawBufferPointer, fds: UnsafeBufferPointer<Int32>) throws(ClientError)
    /// Moves up to `count` bytes the server sent to `p`, appending the
    /// descriptors that came with them to `fds`; 0 once the server has
    /// closed and everything was read. Throws ETIMEDOUT when the server
    /// has said nothing (it never will: it is served synchronously).
    func receive(into p: UnsafeMutableRawPointer, count: Int, fds: inout [Int32]) throws(ClientError) -> Int
    /// Whether bytes, or the end, wait to be received.
    var readable: Bool { get }
    /// The client leaves: the server sees the end of its stream.
    func hangUp()
    /// Set by the client: answers a command the server sends mid-request
    /// (DMA_READ/DMA_WRITE), as a client reading its socket would.
    var serverCommandHandler: ((Reply) throws(ClientError) -> Void)? { get set }
}

/// A vfio-user client over a UNIX socket, behaving like QEMU's
/// `vfio-user-pci`: proposes version 0.0 with QEMU's capabilities, sends
/// one request at a time (posted writes excepted) and answers the server's
/// DMA_READ/DMA_WRITE from memory it registered.
///
/// Not thread-safe: one thread drives a client.
public final class VFIOUserClient {
    /// The connected socket; -1 for a client over a `ClientWire`.
    public let socket: Int32
    private let wire: ClientWire?
    private var nextID: UInt16 = 0
    /// How long a request waits for its reply, in ms (QEMU's proxy waits
    /// 5 s by default, `x-msg-timeout`); -1 waits for ever.
    /// Setting it bounds the no-allocation calls' (`read`, `write`) wait too.
    public var replyTimeout: Int32 = 10_000 {
        didSet {
            guard socket >= 0 else { return }
            var tv = timeval(tv_sec: replyTimeout < 0 ? 0 : Int(replyTimeout / 1000), tv_usec: replyTimeout < 0 ? 0 : Int(replyTimeout % 1000) * 1000)
            setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }
    private let sendBuffer: UnsafeMutableRawBufferPointer
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    /// The server's capabilities after `negotiate`.
    public private(set) var server: Capabilities?
    /// Memory answering the server's DMA_READ/DMA_WRITE, by IOVA.
    private var dmaMemory: [(iova: UInt64, memory: UnsafeMutableRawBufferPointer)] = []
    /// The server's VERSION JSON text as received.
    public internal(set) var serverVersionJSON = ""
    /// DMA requests the server sent (for tests).
    public private(set) var serverDMARequests = 0

    /// QEMU's VERSION JSON, byte for byte as recorded (reference transcripts).
    public static let qemuCapabilitiesJSON =
        #"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}"#

    /// Connects to the server socket at `path`.
    public convenience init(path: String) throws(ClientError) {
        let connection: OwnedDescriptor
        do { connection = try UnixSocket.connect(path: path) } catch { throw .system(error.errno, error.message) }
        self.init(connected: connection)
    }

    /// Serves over an already connected socket, which the client owns from here.
    public convenience init(connected connection: consuming OwnedDescriptor) {
        self.init(socket: connection.release().rawValue, wire: nil)   // the socket is closed in deinit
    }

    /// A client whose messages go over `wire` instead of a socket.
    public convenience init(wire: ClientWire) {
        self.init(socket: -1, wire: wire)
        wire.serverCommandHandler = { [unowned self] (m: Reply) throws(ClientError) in try self.serveDMA(m) }
    }

    private init(socket: Int32, wire: ClientWire?) {
        self.socket = socket
        self.wire = wire
        sendBuffer = .allocate(byteCount: Limits.maxMessageSize + 4096, alignment: 16)
        receiveBuffer = .allocate(byteCount: Limits.maxMessageSize + 4096, alignment: 16)
    }

    /// Ends the connection now (the server sees the client leave); the
    /// descriptor is closed when the client goes.
    public func disconnect() {
        if let wire { wire.hangUp() } else { shutdown(socket, Int32(SHUT_RDWR)) }
    }

    deinit {
        if socket >= 0 { close(socket) }
        wire?.serverCommandHandler = nil
        sendBuffer.deallocate()
        receiveBuffer.deallocate()
    }

    // MARK: Raw messages

    /// Sends `count` bytes at `p` (and `fds`) in one message: one sendmsg,
    /// or one delivery over the wire.
    private func transmit(_ p: UnsafeRawPointer, _ count: Int, fds: UnsafeBufferPointer<Int32> = .init(start: nil, count: 0)) throws(ClientError) {
        if let wire { return try wire.send(UnsafeRawBufferPointer(start: p, count: count), fds: fds) }
        let n = umdev_sendmsg(socket, p, count, fds.baseAddress, Int32(fds.count))
        guard n == count else { throw n < 0 ? .system(errno, "sendmsg") : .disconnected }
    }

    /// Sends raw bytes (tests use it for malformed messages).
    public func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) throws(ClientError) {
        var failure: ClientError?
        bytes.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in
                do throws(ClientError) { try transmit(b.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, b.count, fds: f) } catch { failure = error }
            }
        }
        if let failure { throw failure }
    }

    private func readExactly(_ p: UnsafeMutableRawPointer, _ count: Int, fds: inout [Int32]) throws(ClientError) {
        var got = 0
        while got < count {
            if let wire {
                let n = try wire.receive(into: p + got, count: count - got, fds: &fds)
                if n == 0 { throw .disconnected }
                got += n
                continue
            }
            var scratch = [Int32](repeating: -1, count: Int(UMDEV_MAX_FDS))
            var nfds: Int32 = 0, truncated: Int32 = 0
            let n = scratch.withUnsafeMutableBufferPointer {
                umdev_recvmsg(socket, p + got, count - got, 0, $0.baseAddress, Int32($0.count), &nfds, &truncated)
            }
            if n < 0 { throw .system(errno, "recvmsg") }
            if n == 0 { throw .disconnected }
            fds += scratch[0..<Int(nfds)]
            got += n
        }
    }

    /// Whether something waits to be received within `timeout` ms (a wire answers at once).
    private func readable(within timeout: Int32) -> Bool {
        if let wire { return wire.readable }
        var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, timeout) != 0
    }

    /// Receives the next message whole (waits). `timeout` in ms; -1 waits for ever.
    public func receiveMessage(timeout: Int32 = 10_000) throws(ClientError) -> Reply {
        if !readable(within: timeout) { throw .system(ETIMEDOUT, "waiting for the server") }
        var fds: [Int32] = []
        try readExactly(receiveBuffer.baseAddress!, Header.size, fds: &fds)
        let h = Header(receiveBuffer.baseAddress!)
        guard h.messageSize >= 16, Int(h.messageSize) <= receiveBuffer.count else { throw .malformed("message size \(h.messageSize)") }
        if h.payloadSize > 0 { try readExactly(receiveBuffer.baseAddress! + 16, h.payloadSize, fds: &fds) }
        let payload = Array(UnsafeRawBufferPointer(start: receiveBuffer.baseAddress! + 16, count: h.payloadSize))
        return Reply(header: h, payload: payload, fds: fds)
    }

    /// Whether the server sent nothing within `timeout` ms (used to check posted writes get no reply).
    public func isQuiet(for timeout: Int32) -> Bool { !readable(within: timeout) }

    /// Sends a command and returns its reply, serving any DMA_READ/DMA_WRITE
    /// the server sends meanwhile. An error reply throws `.remote(errno)`.
    @discardableResult
    public func request(_ command: Command, payload: [UInt8] = [], fds: [Int32] = [], flags: UInt32 = 0,
                        messageID: UInt16? = nil) throws(ClientError) -> Reply {
        let id = messageID ?? nextMessageID()
        var msg = [UInt8](repeating: 0, count: Header.size)
        msg.withUnsafeMutableBytes {
            Header(messageID: id, command: command.rawValue, messageSize: UInt32(Header.size + payload.count), flags: flags).store(to: $0.baseAddress!)
        }
        msg += payload
        try sendRaw(msg, fds: fds)
        if flags & Header.noReply != 0 { return Reply(header: Header(messageID: id, command: command.rawValue, messageSize: 16), payload: [], fds: []) }
        return try awaitReply(id: id, command: command)
    }

    public func nextMessageID() -> UInt16 {
        defer { nextID &+= 1 }
        return nextID
    }

    /// Waits for the reply to (id, command), answering server DMA requests.
    public func awaitReply(id: UInt16, command: Command) throws(ClientError) -> Reply {
        while true {
            let m = try receiveMessage(timeout: replyTimeout)
            if m.header.isCommand {
                try serveDMA(m)
                continue
            }
            guard m.header.messageID == id, m.header.command == command.rawValue else {
                for fd in m.fds { close(fd) }
                throw .malformed("reply to \(m.header.command)/\(m.header.messageID), expected \(command.rawValue)/\(id)")
            }
            if m.header.isError {
                for fd in m.fds { close(fd) }
                throw .remote(Int32(m.header.error))
            }
            return m
        }
    }

    // MARK: Hot path (no allocation)

    /// REGION_READ into `buffer` with reusable buffers; for benchmarks.
    public func read(region: UInt32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ClientError) {
        var w = MessageWriter(sendBuffer)
        w.u64(offset); w.u32(region); w.u32(UInt32(buffer.count))
        let id = nextMessageID()
        let n = w.finish(messageID: id, command: Command.regionRead.rawValue, flags: 0)
        try fastExchange(length: n, id: id)
        let h = Header(receiveBuffer.baseAddress!)
        if h.isError { throw .remote(Int32(h.error)) }
        guard h.payloadSize == 16 + buffer.count else { throw .malformed("REGION_READ reply size") }
        if buffer.count > 0 { buffer.baseAddress!.copyMemory(from: receiveBuffer.baseAddress! + 32, byteCount: buffer.count) }
    }

    /// REGION_WRITE with reusable buffers; `posted` sets No_reply.
    public func write(region: UInt32, offset: UInt64, from data: UnsafeRawBufferPointer, posted: Bool = false) throws(ClientError) {
        var w = MessageWriter(sendBuffer)
        w.u64(offset); w.u32(region); w.u32(UInt32(data.count)); w.bytes(data)
        let id = nextMessageID()
        let n = w.finish(messageID: id, command: Command.regionWrite.rawValue, flags: posted ? Header.noReply : 0)
        if posted { return try transmit(sendBuffer.baseAddress!, n) }
        try fastExchange(length: n, id: id)
        let h = Header(receiveBuffer.baseAddress!)
        if h.isError { throw .remote(Int32(h.error)) }
    }

    private func fastExchange(length: Int, id: UInt16) throws(ClientError) {
        if wire != nil {
            // Over a wire nothing is to be saved: the ordinary path leaves the
            // reply in the receive buffer, where the callers read it.
            try transmit(sendBuffer.baseAddress!, length)
            let r = try receiveMessage()
            for fd in r.fds { close(fd) }
            guard r.header.messageID == id else { throw .malformed("unexpected message on the fast path") }
            return
        }
        let sent = umdev_sendmsg(socket, sendBuffer.baseAddress, length, nil, 0)
        guard sent == length else { throw .system(errno, "sendmsg") }
        var got = 0
        var nfds: Int32 = 0, truncated: Int32 = 0
        var need = Header.size
        while got < need {
            let n = umdev_recvmsg(socket, receiveBuffer.baseAddress! + got, receiveBuffer.count - got, 0, nil, 0, &nfds, &truncated)
            if n < 0 { throw errno == EAGAIN ? .system(ETIMEDOUT, "waiting for the server") : .system(errno, "recvmsg") }
            if n == 0 { throw .disconnected }
            got += n
            if got >= Header.size { need = Int(Header(receiveBuffer.baseAddress!).messageSize) }
            guard need >= Header.size, need <= receiveBuffer.count else { throw .malformed("message size") }
        }
        let h = Header(receiveBuffer.baseAddress!)
        guard got == need, h.messageID == id else { throw .malformed("unexpected message on the fast path") }
    }

    // MARK: Server-initiated DMA

    /// Registers memory that answers the server's DMA_READ/DMA_WRITE for
    /// [iova, iova + memory.count) (a window mapped without a descriptor).
    public func registerDMAMemory(iova: UInt64, memory: UnsafeMutableRawBufferPointer) {
        dmaMemory.append((iova, memory))
    }

    private func serveDMA(_ m: Reply) throws(ClientError) {
        for fd in m.fds { close(fd) }
        serverDMARequests += 1
        var w = MessageWriter(sendBuffer)
        var error: Int32 = 0
        switch Command(rawValue: m.header.command) {
        case .dmaRead?, .dmaWrite?:
            guard m.payload.count >= 16 else { error = EINVAL; break }
            let address = m.u64(0), count = m.u64(8)
            let isWrite = m.header.command == Command.dmaWrite.rawValue
            guard count <= UInt64(Limits.maxDataTransfer), !isWrite || m.payload.count == 16 + Int(count) else { error = EINVAL; break }
            guard let region = dmaMemory.first(where: { address >= $0.iova && address + count <= $0.iova + UInt64($0.memory.count) }) else {
                error = EFAULT; break
            }
            let at = region.memory.baseAddress! + Int(address - region.iova)
            w.u64(address); w.u64(count)
            if isWrite {
                m.payload.withUnsafeBytes { at.copyMemory(from: $0.baseAddress! + 16, byteCount: Int(count)) }
            } else {
                w.bytes(UnsafeRawBufferPointer(start: at, count: Int(count)))
            }
        default:
            error = ENOSYS
        }
        let n: Int
        if error != 0 {
            n = MessageWriter(sendBuffer).finish(messageID: m.header.messageID, command: m.header.command,
                                                 flags: Header.typeReply | Header.errorFlag, error: UInt32(error))
        } else {
            n = w.finish(messageID: m.header.messageID, command: m.header.command, flags: Header.typeReply)
        }
        try transmit(sendBuffer.baseAddress!, n)
    }
}
