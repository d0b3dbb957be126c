import CShim
import Descriptors
import Glibc
import Locking
import Logging
import PCI
import SystemPackage
import UnixSocket
import VFIOUser

/// The display socket (Protocol/README.md §23): where viewers attach while a
/// VMM holds the device socket. Any number of viewers, up to `maxViewers`,
/// each served on a thread of its own with the same framing and VERSION
/// negotiation as the device socket.
///
/// Viewers see the device's fixed description (info, regions with their
/// descriptors, IRQ info) and its published planes; everything that would
/// change the device, or read its registers, is refused with EPERM. Nothing
/// here touches the device model, so no viewer can block or slow the
/// device's thread.
public final class DisplayServer: @unchecked Sendable {
    // @unchecked: `description` is immutable and Sendable; the descriptors
    // shared with `stop` and the viewer threads are behind `state`.
    public static let maxViewers = 32
    /// Viewers send small messages only: VERSION, info and plane queries.
    static let maxViewerMessage = 64 << 10

    public let path: String
    /// Whether `stop` removes the socket file (it made it, or a previous
    /// process that did handed it over).
    public let ownsSocketFile: Bool
    let description: DeviceDescription
    let logger: Logger
    private struct State {
        var listen: Int32
        var viewers: Set<Int32> = []
        var stopped = false
    }
    private let state: Locked<State>
    private var acceptThread: pthread_t?

    public init(description: DeviceDescription, path: String, logger: Logger) throws(DeviceError) {
        self.description = description
        self.path = path
        self.logger = logger
        ownsSocketFile = true
        let listener: OwnedDescriptor
        do { listener = try UnixSocket.listen(path: path, backlog: 16) } catch { throw DeviceError(error.errno, error.description) }
        // The state owns it from here: `stop` shuts it down and closes it.
        state = Locked(State(listen: listener.release().rawValue))
    }

    /// Serves viewers on a listening socket a live upgrade handed over
    /// (now this server's); `path` is where its file is ("" for none).
    /// Viewers of the previous process reconnect to it by themselves.
    public init(description: DeviceDescription, handedOverListener listener: Int32, path: String, ownsSocketFile: Bool, logger: Logger) {
        self.description = description
        self.path = path
        self.logger = logger
        self.ownsSocketFile = ownsSocketFile && !path.isEmpty
        state = Locked(State(listen: listener))
    }

    /// The listening socket (still this server's), for a live upgrade's
    /// handover; -1 once stopped. Its viewers' connections are close-on-exec:
    /// they end with this process, and the viewers come back to the listener.
    public var listener: Int32 { state.withLock { $0.stopped ? -1 : $0.listen } }

    /// Viewers connected now.
    public var viewerCount: Int { state.withLock { $0.viewers.count } }

    /// Waits until at most `count` viewers are connected (their threads
    /// have noticed their hang-ups) or `timeout` seconds pass; returns
    /// whether that many or fewer are left.
    public func waitForViewers(atMost count: Int, timeout: Double) -> Bool {
        state.wait(timeout: timeout) { $0.viewers.count <= count }
    }

    /// Starts accepting viewers on a thread of its own.
    public func start() {
        acceptThread = Threads.start { self.acceptLoop() }
    }

    private func acceptLoop() {
        while true {
            let listenFD = state.withLock { $0.stopped ? -1 : $0.listen }
            guard listenFD >= 0 else { return }
            let c: Int32
            // The viewer's thread owns the connection from here.
            do { c = try UnixSocket.accept(FileDescriptor(rawValue: listenFD)).release().rawValue } catch {
                if !state.withLock({ $0.stopped }) { logger.error("display socket: \(error)") }
                return
            }
            let admitted = state.withLock { s -> Int? in
                guard !s.stopped, s.viewers.count < Self.maxViewers else { return nil }
                s.viewers.insert(c)
                return s.viewers.count
            }
            guard let count = admitted else {
                logger.warning("display socket: refusing a viewer, \(Self.maxViewers) already attached")
                close(c)
                continue
            }
            logger.info("viewer connected", metadata: ["socket": "\(path)", "viewers": "\(count)"])
            let viewer = Viewer(socket: c, description: description, logger: logger)
            let thread = Threads.start(detached: true) { [self] in
                viewer.run()
                let left = state.withLock { s -> Int in
                    s.viewers.remove(c)
                    return s.viewers.count
                }
                close(c)
                logger.info("viewer disconnected", metadata: ["socket": "\(path)", "viewers": "\(left)"])
            }
            if thread == nil {
                let e = errno
                logger.error("display socket: cannot start a viewer thread: \(String(cString: strerror(e)))")
                state.withLock { _ = $0.viewers.remove(c) }
                close(c)
            }
        }
    }

    /// Stops accepting, ends every viewer's connection, and waits (briefly)
    /// for their threads to finish.
    public func stop() {
        let listen = state.withLock { s -> Int32 in
            if s.stopped { return -1 }
            s.stopped = true
            // Under the lock: a viewer leaves the set before its socket is
            // closed, so every number here is still that viewer's.
            for v in s.viewers { shutdown(v, Int32(SHUT_RDWR)) }
            return s.listen
        }
        if listen >= 0 { shutdown(listen, Int32(SHUT_RDWR)) }
        if let t = acceptThread { pthread_join(t, nil); acceptThread = nil }
        _ = waitForViewers(atMost: 0, timeout: 1)
        if listen >= 0 {
            close(listen)
            if ownsSocketFile { unlink(path) }
        }
    }
}

/// One viewer's connection.
final class Viewer: @unchecked Sendable {
    // @unchecked: created by the accept thread, then used by its own thread only.
    let transport: Transport<SocketChannel>
    let description: DeviceDescription
    let logger: Logger
    private var client: Capabilities?
    /// What a viewer may do: look, never change.
    static let policy = RequestPolicy.readOnly
    /// Most descriptors a message may carry, as on the device socket.
    private var fdLimit = Limits.maxMessageFDs

    init(socket: Int32, description: DeviceDescription, logger: Logger) {
        transport = Transport(channel: SocketChannel(socket: socket),
                              framer: MessageFramer(maxMessageSize: DisplayServer.maxViewerMessage))
        self.description = description
        self.logger = logger
    }

    func run() {
        defer { transport.closeFDs() }
        do {
            while true {
                guard let message = try transport.receive() else { continue }
                try handle(message)
            }
        } catch {
            if case .framing(let why) = error { logger.notice("closing viewer: \(why)") }
        }
    }

    /// The device socket's request path, under the read-only policy.
    private func handle(_ m: InboundMessage) throws(TransportEnd) {
        try handleMessage(m, on: transport, policy: Self.policy, negotiated: client != nil, fdLimit: fdLimit, logger: logger) { request, h, _ in
            try route(request, header: h)
        }
    }

    private func route(_ request: Request, header h: Header) throws {
        var w = MessageWriter(transport.sendBuffer)
        if case .version(_, _, let caps) = request {
            let answer = try Capabilities.serverReply(to: caps, offersMigration: false)
            answer.encodeVersionReply(&w)
            client = caps
            fdLimit = answer.maxMessageFDs
            return try transport.reply(w, to: h)
        }
        guard try description.answerQuery(request, header: h, gfx: client?.gfxPlane != nil, readOnlyMemory: Self.policy.readOnlyMemory,
                                          writer: &w, transport: transport) else {
            throw ProtocolError(EPERM, "the display socket does not change the device")
        }
    }
}
