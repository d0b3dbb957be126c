import Glibc
import Logging
import PCI
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient
import VFIOUserServer

/// A device served over an InMemoryChannel on the test's own thread: the
/// test pushes requests, the endpoint serves until it has nothing more, and
/// the replies are read back. No socket, no thread, no sleep.
final class MemoryPeer {
    let channel = InMemoryChannel()
    let clock = ManualClock()
    let host: DeviceHost
    let endpoint: Endpoint<InMemoryChannel, ManualClock>
    private var nextID: UInt16 = 100

    init(_ device: VFIODevice, type: String = "test") {
        host = DeviceHost(device: device, typeName: type)
        endpoint = Endpoint(host: host, channel: channel, clock: clock, logger: quietLogger)
        endpoint.attach()
    }

    deinit { endpoint.detach() }

    /// Pushes `bytes` as one read, serves, and returns every message sent meanwhile.
    func exchange(_ bytes: [UInt8], fds: [Int32] = []) throws(TransportEnd) -> [InMemoryChannel.Sent] {
        channel.push(bytes, fds: fds)
        try endpoint.serveUntilIdle()
        return channel.takeSent()
    }

    /// The errno of the single reply to `bytes` (0: success); its descriptors are closed.
    func errnoOf(_ bytes: [UInt8], fds: [Int32] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> Int32 {
        let sent = try exchange(bytes, fds: fds)
        #expect(sent.count == 1, "exactly one reply", sourceLocation: sourceLocation)
        guard let r = sent.first else { return -1 }
        for fd in r.fds { close(fd) }
        #expect(r.header.isReply, sourceLocation: sourceLocation)
        #expect(r.header.command == Header(bytes).command, sourceLocation: sourceLocation)
        return r.header.isError ? Int32(r.header.error) : 0
    }

    /// Sends a command with `payload` and returns its only reply.
    func request(_ command: Command, payload: [UInt8] = [], fds: [Int32] = [],
                 sourceLocation: SourceLocation = #_sourceLocation) throws -> InMemoryChannel.Sent {
        nextID &+= 1
        let sent = try exchange(rawMessage(id: nextID, command: command.rawValue, payload: payload), fds: fds)
        try #require(sent.count == 1, "exactly one reply", sourceLocation: sourceLocation)
        #expect(sent[0].header.messageID == nextID && sent[0].header.isReply, sourceLocation: sourceLocation)
        return sent[0]
    }

    /// VERSION with QEMU's capabilities; returns the reply.
    @discardableResult
    func negotiate(json: String = VFIOUserClient.qemuCapabilitiesJSON) throws -> InMemoryChannel.Sent {
        let r = try request(.version, payload: [0, 0, 0, 0] + Array(json.utf8) + [0])
        #expect(!r.header.isError)
        return r
    }

    /// A 1..8-byte REGION_READ; returns the value read (little-endian).
    func read(region: UInt32, offset: UInt64, count: UInt32) throws -> UInt64 {
        let r = try request(.regionRead, payload: le64(offset) + le32(region) + le32(count))
        try #require(!r.header.isError, "REGION_READ failed: errno \(r.header.error)")
        try #require(r.payload.count == 16 + Int(count))
        return r.payload.dropFirst(16).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// A 1..8-byte REGION_WRITE; returns the reply's errno (0: success).
    func write(region: UInt32, offset: UInt64, count: UInt32, value: UInt64) throws -> Int32 {
        let data = le64(value).prefix(Int(count))
        let r = try request(.regionWrite, payload: le64(offset) + le32(region) + le32(count) + data)
        return r.header.isError ? Int32(r.header.error) : 0
    }
}

extension Header {
    /// The header at the start of `bytes`.
    init(_ bytes: [UInt8]) { self = bytes.withUnsafeBytes { Header($0.baseAddress!) } }
}

// MARK: A client over memory

/// A device served in this process with no socket and no thread: each
/// connection is an endpoint over an InMemoryChannel that runs on the
/// test's thread whenever its client sends. A request is answered before
/// `send` returns, so nothing waits and nothing races.
final class MemoryServer {
    let host: DeviceHost
    let device: VFIODevice

    init(_ device: VFIODevice, type: String = "test") {
        self.device = device
        host = DeviceHost(device: device, typeName: type)
    }

    convenience init(mappable: Bool = true) throws { self.init(try TestDevice(mappable: mappable)) }

    /// A new connection (the previous client's must have ended, as on the
    /// device socket, which serves one client at a time).
    func connect(negotiate: Bool = true) throws -> VFIOUserClient {
        let c = VFIOUserClient(wire: MemoryWire(host: host))
        if negotiate { try c.negotiate() }
        return c
    }
}

/// One connection of a MemoryServer: the client's side of an in-memory channel.
final class MemoryWire: ClientWire {
    private let channel = InMemoryChannel()
    private let endpoint: Endpoint<InMemoryChannel, SystemClock>
    /// What the server sent and the client has not read yet, message by
    /// message; a message's descriptors go with its first byte.
    private var incoming: [(bytes: [UInt8], fds: [Int32])] = []
    private var serving = false
    private var ended = false
    var serverCommandHandler: ((Reply) throws(ClientError) -> Void)?

    init(host: DeviceHost) {
        endpoint = Endpoint(host: host, channel: channel, clock: SystemClock(), logger: quietLogger)
        endpoint.attach()
        channel.whenEmpty = { [unowned self] in self.answerServerCommands() }
    }

    deinit {
        if !ended { endpoint.detach() }
        for m in incoming { for fd in m.fds { close(fd) } }
    }

    func send(_ bytes: UnsafeRawBufferPointer, fds: UnsafeBufferPointer<Int32>) throws(ClientError) {
        guard !ended else { throw .system(EPIPE, "sendmsg") }
        channel.push(Array(bytes), fds: fds.map { dup($0) })
        // An answer to the server's DMA request, sent while it is serving: it reads it next.
        if serving { return }
        serve()
    }

    /// Serves what was pushed, then collects what the server sent.
    private func serve() {
        serving = true
        defer { serving = false }
        do {
            try endpoint.serveUntilIdle()
        } catch {
            ended = true
            endpoint.detach()
        }
        collect()
    }

    private func collect() {
        for s in channel.takeSent() { incoming.append((s.bytes, s.fds)) }
    }

    /// Mid-request, the server waits for input: answer the commands it sent
    /// (DMA_READ/DMA_WRITE) and keep its replies for the client.
    private func answerServerCommands() -> Bool {
        var answered = false
        for s in channel.takeSent() {
            if s.header.isCommand, let handle = serverCommandHandler {
                try? handle(Reply(header: s.header, payload: Array(s.payload), fds: s.fds))
                answered = true
            } else {
                incoming.append((s.bytes, s.fds))
            }
        }
        return answered
    }

    func receive(into p: UnsafeMutableRawPointer, count: Int, fds: inout [Int32]) throws(ClientError) -> Int {
        guard !incoming.isEmpty else {
            if ended { return 0 }
            throw .system(ETIMEDOUT, "the server sent nothing")
        }
        let n = min(count, incoming[0].bytes.count)
        incoming[0].bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: n) }
        fds += incoming[0].fds
        incoming[0].fds = []
        if n == incoming[0].bytes.count { incoming.removeFirst() } else { incoming[0].bytes.removeFirst(n) }
        return n
    }

    var readable: Bool { !incoming.isEmpty || ended }

    func hangUp() {
        guard !ended else { return }
        channel.close()
        serve()
    }
}
