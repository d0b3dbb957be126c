import CShim
import Descriptors
import Glibc
import Locking
import Logging
import PCI
import SystemPackage
import UnixSocket
import VFIOUser

/// Serves one device on one listening socket.
///
/// A vfio-user device has one client at a time. An acceptor (the thread
/// that calls `serve`, or the one `start` creates) takes each connection;
/// the first gets the device and a session thread of its own, which serves
/// it until it closes. A second client arriving meanwhile is refused at
/// once, with EBUSY in reply to its VERSION, rather than left waiting in
/// the backlog. Each served device has its own threads, so a stalled client
/// of one never holds up another device.
///
/// While a client is attached its session thread owns the device. Between
/// clients a management thread may borrow it (`withIdleDevice`: reset,
/// save, load, attributes); a client arriving meanwhile waits for that to
/// finish. Neither takes a lock per message.
public final class DeviceServer: @unchecked Sendable {
    // @unchecked: `host` is touched only by the session thread while a
    // client is attached, and by `withIdleDevice` otherwise, never both
    // (`owner` decides, under `lock`); everything else mutable is behind `lock`.
    public let host: DeviceHost
    /// The socket's path: where it listens, or what an inherited socket is bound to ("" if unnamed).
    public let path: String
    /// Whether this server created the socket file (and so removes it on stop).
    private let ownsSocketFile: Bool
    let logger: Logger
    /// How long a client may leave replies unread before it is dropped.
    public let stallTimeout: Double
    /// Spin on the connection this long before blocking for a request (0: never).
    public let pollMicroseconds: Int
    /// How long a second client's arrival waits for a first that is leaving.
    static let handoverGrace: Double = 0.25

    private enum Owner { case nobody, client, management }
    private struct State {
        var listen: Int32
        var owner = Owner.nobody
        var connection: Int32 = -1
        var clientPID: pid_t?
        var session: pthread_t?
        var stopped = false
    }
    private var state: State
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var acceptThread: pthread_t?

    public convenience init(host: DeviceHost, path: String, logger: Logger, stallTimeout: Double = 5,
                            pollMicroseconds: Int = 0) throws(DeviceError) {
        let listener: OwnedDescriptor
        do { listener = try UnixSocket.listen(path: path) } catch { throw DeviceError(error.errno, error.description) }
        self.init(host: host, listening: listener, path: path, ownsSocketFile: true, logger: logger,
                  stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
    }

    /// Serves on a socket this process was given already listening (`--fd`,
    /// socket activation): its file, if any, is left in place on stop.
    /// `connected` sockets are served with `serve(connection:)` instead.
    public convenience init(host: DeviceHost, inheritedListener listener: consuming OwnedDescriptor, logger: Logger,
                            stallTimeout: Double = 5, pollMicroseconds: Int = 0) {
        let path = InheritedSocket.boundPath(listener.fileDescriptor) ?? ""
        self.init(host: host, listening: listener, path: path, ownsSocketFile: false, logger: logger,
                  stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
    }

    /// Serves no listener: only the connection handed to `serve(connection:)`
    /// (`--fd` given a socket already connected to the client).
    public convenience init(host: DeviceHost, logger: Logger, stallTimeout: Double = 5, pollMicroseconds: Int = 0) {
        self.init(host: host, listening: nil, path: "", ownsSocketFile: false, logger: logger,
                  stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
    }

    private init(host: DeviceHost, listening listener: consuming OwnedDescriptor?, path: String, ownsSocketFile: Bool, logger: Logger,
                 stallTimeout: Double, pollMicroseconds: Int) {
        self.host = host
        self.path = path
        self.ownsSocketFile = ownsSocketFile
        self.logger = logger
        self.stallTimeout = stallTimeout
        self.pollMicroseconds = max(0, min(pollMicroseconds, 1_000_000))
        // The state owns the listener from here: `stop` shuts it down and closes it.
        state = State(listen: listener?.release().rawValue ?? -1)
        pthread_mutex_init(lock, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(changed, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(lock)
        changed.deallocate()
        lock.deallocate()
    }

    private func locked<T>(_ body: (inout State) -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body(&state)
    }

    /// Waits on `changed` until `deadline` (monotonic ns), `lock` held.
    private func wait(until deadline: UInt64?) {
        guard let deadline else { pthread_cond_wait(changed, lock); return }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(changed, lock, &ts)
    }

    /// Starts the acceptor on a thread of its own.
    public func start() {
        acceptThread = Threads.start { self.serve() }
    }

    /// Accepts connections on the calling thread until `stop`.
    public func serve() {
        while true {
            let listenFD = locked { $0.stopped ? -1 : $0.listen }
            guard listenFD >= 0 else { return }
            let c: Int32
            // The session owns the connection from here (closed on release).
            do { c = try UnixSocket.accept(FileDescriptor(rawValue: listenFD)).release().rawValue } catch {
                if !locked({ $0.stopped }) { logger.error("\(error)") }
                return
            }
            let peer = Self.peerPID(c)
            switch claim(c, peer: peer) {
            case .granted:
                // A client that stops reading replies must not hold the
                // device's thread for ever: sends give up after a while.
                var tv = timeval(tv_sec: 0, tv_usec: 200_000)
                setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                logger.info("client connected", metadata: ["socket": "\(path)", "pid": "\(peer.map(String.init) ?? "?")"])
                let session = Threads.start { self.runSession(c) }
                if let session {
                    locked { $0.session = session }
                } else {
                    // Out of threads or memory: say so to the client rather
                    // than close on it without a word.
                    let e = errno
                    logger.error("cannot start a session thread: \(String(cString: strerror(e)))")
                    vacate()
                    refuse(c, errno: EAGAIN)
                }
            case .busy(let holder):
                logger.notice("refusing a second client: the device is attached",
                              metadata: ["socket": "\(path)", "pid": "\(peer.map(String.init) ?? "?")",
                                         "holder": "\(holder.map(String.init) ?? "?")"])
                refuse(c, errno: EBUSY)
            case .stopped:
                close(c)
                return
            }
        }
    }

    /// Serves one client already connected on `connection` (`--fd` given a
    /// connected socket) on the calling thread, and returns when it leaves.
    public func serve(connection: consuming OwnedDescriptor) {
        let c = connection.release().rawValue   // the session's from here, as an accepted one
        let peer = Self.peerPID(c)
        guard case .granted = claim(c, peer: peer) else { close(c); return }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        logger.info("serving the connected client", metadata: ["pid": "\(peer.map(String.init) ?? "?")"])
        runSession(c)
    }

    private enum Claim { case granted, busy(pid_t?), stopped }

    /// Gives the device to the connection `c` if nobody else has it: waits
    /// out a management borrow, and a little while for a client that is
    /// leaving; refuses while another client stays.
    private func claim(_ c: Int32, peer: pid_t?) -> Claim {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        let grace = monotonicNanoseconds() + UInt64(Self.handoverGrace * 1e9)
        // Bounded even for a holder that half-closed and then stopped
        // reading: its session gives up after the stall timeout.
        let leaving = grace + UInt64((stallTimeout + 1) * 1e9)
        while true {
            if state.stopped { return .stopped }
            switch state.owner {
            case .nobody:
                if let previous = state.session {
                    // The last session ends; reap its thread before the next.
                    state.session = nil
                    pthread_mutex_unlock(lock)
                    pthread_join(previous, nil)
                    pthread_mutex_lock(lock)
                    continue
                }
                state.owner = .client
                state.connection = c
                state.clientPID = peer
                return .granted
            case .management:
                wait(until: nil)
            case .client:
                let now = monotonicNanoseconds()
                if now < grace {
                    wait(until: grace)
                } else if now < leaving, Self.peerHasHungUp(state.connection) {
                    // The holder has closed its end: its session reaches the
                    // end of the stream and releases the device, however
                    // loaded the machine. Wait for that rather than refuse
                    // a client that merely came back quickly.
                    wait(until: min(leaving, now + 10_000_000))
                } else {
                    return .busy(state.clientPID)
                }
            }
        }
    }

    private func runSession(_ c: Int32) {
        let endpoint = Endpoint(host: host, socket: c, logger: logger, stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
        endpoint.run()
        release(c)
        logger.info("client disconnected", metadata: ["socket": "\(path)"])
    }

    /// The device is nobody's again; a client waiting in `claim` may take it.
    private func vacate() {
        locked { s in
            s.owner = .nobody
            s.connection = -1
            s.clientPID = nil
        }
        pthread_cond_broadcast(changed)
    }

    private func release(_ c: Int32) {
        vacate()
        close(c)
    }

    /// A client that cannot be served: answer its VERSION (the spec's first
    /// message; waited for briefly) with `errno` and close.
    private func refuse(_ c: Int32, errno e: Int32) {
        var tv = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var raw = [UInt8](repeating: 0, count: Header.size)
        let n = raw.withUnsafeMutableBytes { recv(c, $0.baseAddress, Header.size, Int32(MSG_WAITALL)) }
        if n == Header.size {
            let h = raw.withUnsafeBytes { Header($0.baseAddress!) }
            if h.command == Command.version.rawValue && h.flags & Header.typeMask == Header.typeCommand {
                raw.withUnsafeMutableBytes {
                    Header(messageID: h.messageID, command: h.command, messageSize: UInt32(Header.size),
                           flags: Header.typeReply | Header.errorFlag, error: UInt32(e)).store(to: $0.baseAddress!)
                }
                _ = raw.withUnsafeBytes { send(c, $0.baseAddress, Header.size, Int32(MSG_NOSIGNAL)) }
            }
        }
        close(c)
    }

    /// Whether the other end of a connected socket has shut down or closed.
    static func peerHasHungUp(_ socket: Int32) -> Bool {
        guard socket >= 0 else { return false }
        let rdhup = Int16(UMDEV_POLLRDHUP)
        var p = pollfd(fd: socket, events: rdhup, revents: 0)
        return poll(&p, 1, 0) == 1 && p.revents & (rdhup | Int16(POLLHUP)) != 0
    }

    /// The peer's process id (SO_PEERCRED), if the kernel gives it.
    static func peerPID(_ socket: Int32) -> pid_t? {
        let pid = umdev_peer_pid(socket)
        return pid > 0 ? pid : nil
    }

    // MARK: Management

    /// Whether a client is attached now.
    public var isAttached: Bool { locked { $0.owner == .client } }

    /// The attached client's process id, when known.
    public var clientPID: pid_t? { locked { $0.clientPID } }

    /// Runs `body` with the device while no client is attached (a client
    /// arriving meanwhile waits until it returns); nil, without running it,
    /// when a client is attached.
    public func withIdleDevice<T>(_ body: (DeviceHost) throws -> T) rethrows -> T? {
        let borrowed = locked { s -> Bool in
            while s.owner == .management { pthread_cond_wait(changed, lock) }
            guard s.owner == .nobody, !s.stopped else { return false }
            s.owner = .management
            return true
        }
        guard borrowed else { return nil }
        defer { vacate() }
        return try body(host)
    }

    /// Asks the attached client to release the device: signals the REQ
    /// eventfd it attached (QEMU's kernel vfio-pci answers by unplugging).
    /// False when no client is attached or it attached no REQ eventfd.
    @discardableResult
    public func requestRelease() -> Bool {
        isAttached && host.requestLine.signal()
    }

    /// Ends the attached client's connection (the device keeps its state).
    public func dropClient() {
        let c = locked { $0.connection }
        if c >= 0 { shutdown(c, Int32(SHUT_RDWR)) }
    }

    /// Waits until no client is attached, up to `seconds`; true if none is.
    public func waitUntilDetached(seconds: Double) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(max(0, seconds) * 1e9)
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        while state.owner == .client {
            if monotonicNanoseconds() >= deadline { return false }
            wait(until: deadline)
        }
        return true
    }

    /// Stops accepting, ends the current connection, and waits for the threads.
    public func stop() {
        let listen = locked { s -> Int32 in
            if s.stopped { return -1 }
            s.stopped = true
            // Under the lock: the session vacates before it closes its
            // socket, so this number is still the client's.
            if s.connection >= 0 { shutdown(s.connection, Int32(SHUT_RDWR)) }
            return s.listen
        }
        pthread_cond_broadcast(changed)
        if listen >= 0 { shutdown(listen, Int32(SHUT_RDWR)) }
        if let t = acceptThread { pthread_join(t, nil); acceptThread = nil }
        if let t = locked({ s -> pthread_t? in defer { s.session = nil }; return s.session }) { pthread_join(t, nil) }
        if listen >= 0 { close(listen); if ownsSocketFile { unlink(path) } }
    }
}
