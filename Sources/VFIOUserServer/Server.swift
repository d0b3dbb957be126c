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
    public let ownsSocketFile: Bool
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
        /// A live upgrade asked for the device to hold still (`pause`).
        var pauseRequested = false
        /// The acceptor is waiting out a pause (it accepts nothing meanwhile).
        var acceptorPaused = false
        /// A thread is in `serve()`, accepting.
        var acceptorRunning = false
        /// The session is parked between messages; its endpoint, for the upgrade to read.
        var parked: SocketEndpoint?
        /// The thread serving the client now (a session thread, or the
        /// caller of `serve(connection:)`): where `pause` knocks.
        var serving: pthread_t?
    }
    private var state: State
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var acceptThread: pthread_t?
    /// Written to wake the acceptor out of its poll (pause, stop).
    private let wake: Int32
    /// The connection a handover brought, served first (`init(host:resuming:…)`).
    private var resumedSession: (socket: Int32, endpoint: SocketEndpoint)?

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

    /// Serves a device a previous process handed over (a live upgrade): its
    /// listener, if it had one, and its attached client as an endpoint
    /// already resumed (`Endpoint.resume`), which `serve` goes on serving
    /// first. `ownsSocketFile`: whether the socket file is removed on stop,
    /// as it would have been by the process that made it.
    /// `path`: where the socket file is, if the handover says (else what the listener is bound to).
    public convenience init(host: DeviceHost, handedOverListener listener: consuming OwnedDescriptor?, path given: String? = nil,
                            ownsSocketFile: Bool, client: SocketEndpoint?, logger: Logger, stallTimeout: Double = 5,
                            pollMicroseconds: Int = 0) {
        var path = ""
        if let fd = listener?.fileDescriptor { path = given ?? InheritedSocket.boundPath(fd) ?? "" }
        self.init(host: host, listening: listener, path: path, ownsSocketFile: ownsSocketFile && !path.isEmpty, logger: logger,
                  stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
        if let client {
            let socket = client.transport.channel.socket
            resumedSession = (socket, client)
            state.owner = .client
            state.connection = socket
            state.clientPID = Self.peerPID(socket)
        }
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
        wake = umdev_eventfd(0)
        _ = umdev_install_kick_signal()
        pthread_mutex_init(lock, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(changed, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        if wake >= 0 { close(wake) }
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
        if let resumed = resumedSession {
            resumedSession = nil
            if locked({ $0.listen < 0 }) {
                // A connected socket with no listener behind it (`--fd`):
                // served on this thread, and serving ends when it leaves.
                var tv = timeval(tv_sec: 0, tv_usec: 200_000)
                setsockopt(resumed.socket, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                runSession(resumed.socket, endpoint: resumed.endpoint)
                return
            }
            startSession(resumed.socket, endpoint: resumed.endpoint, peer: Self.peerPID(resumed.socket))
        }
        locked { $0.acceptorRunning = true }
        defer {
            locked { $0.acceptorRunning = false }
            pthread_cond_broadcast(changed)
        }
        while true {
            let listenFD = locked { $0.stopped ? -1 : $0.listen }
            guard listenFD >= 0 else { return }
            // Wait for a connection or a wake-up; a pause holds the acceptor
            // here, so nothing is accepted while a handover is written.
            var set = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            if poll(&set, 2, -1) < 0 {
                if errno == EINTR { continue }
                logger.error("poll on the listening socket: \(String(cString: strerror(errno)))")
                return
            }
            if set[1].revents != 0 {
                var counter: UInt64 = 0
                _ = read(wake, &counter, 8)
            }
            let proceed = locked { s -> Bool in
                while s.pauseRequested && !s.stopped {
                    if !s.acceptorPaused { s.acceptorPaused = true; pthread_cond_broadcast(changed) }
                    pthread_cond_wait(changed, lock)
                }
                s.acceptorPaused = false
                return !s.stopped
            }
            guard proceed else { return }
            guard set[0].revents != 0 else { continue }
            let c: Int32
            // The session owns the connection from here (closed on release).
            do { c = try UnixSocket.accept(FileDescriptor(rawValue: listenFD)).release().rawValue } catch {
                if !locked({ $0.stopped }) { logger.error("\(error)") }
                return
            }
            let peer = Self.peerPID(c)
            switch claim(c, peer: peer) {
            case .granted:
                logger.info("client connected", metadata: ["socket": "\(path)", "pid": "\(peer.map(String.init) ?? "?")"])
                startSession(c, endpoint: nil, peer: peer)
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

    /// Serves the claimed connection `c` on a session thread of its own.
    private func startSession(_ c: Int32, endpoint: SocketEndpoint?, peer: pid_t?) {
        // A client that stops reading replies must not hold the
        // device's thread for ever: sends give up after a while.
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // A resumed endpoint moves to the session thread and is touched by no other.
        nonisolated(unsafe) let endpoint = endpoint
        let session = Threads.start { self.runSession(c, endpoint: endpoint) }
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

    private func runSession(_ c: Int32, endpoint resumed: SocketEndpoint? = nil) {
        // Whatever mask the thread inherited, `pause` must be able to interrupt it.
        _ = umdev_allow_kick()
        locked { $0.serving = pthread_self() }
        defer { locked { $0.serving = nil } }
        let endpoint = resumed ?? Endpoint(host: host, socket: c, logger: logger, stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
        endpoint.whenInterrupted = { [unowned self, unowned endpoint] in self.parkIfAsked(endpoint) }
        if let keeper {
            // Every change a request makes is saved before its reply; the
            // client's arrival (its socket) and its leaving are saved too.
            endpoint.keepsState = true
            let save = { [unowned self, unowned endpoint] in
                keeper(Paused(listener: self.listenerNow, connection: (c, endpoint)))
                // What was saved holds requests already read and not yet handled (a client that
                // sends before its replies come): a restart would handle them, so once one of them
                // is answered, even by a read that changes nothing, the state is saved again first.
                if endpoint.transport.framer.hasBufferedBytes { endpoint.transport.unsaved = true }
            }
            endpoint.transport.saveBeforeReply = save
            endpoint.transport.notePending = pendingKeeper
            save()
        }
        endpoint.run()
        if let keeper {
            endpoint.transport.saveBeforeReply = nil
            endpoint.transport.notePending = nil
            keeper(Paused(listener: listenerNow, connection: nil))
        }
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

    // MARK: Holding still for a live upgrade

    // MARK: Keeping state for a restart after a crash

    /// Saves what the server is made of, as a handover would carry it
    /// (Handover's `StateKeeper`: the service manager's fd store and a
    /// state memfd). Called on the thread that holds the device, never two
    /// at once: after every request that changed something (before its
    /// reply), when a client arrives or leaves, after a management borrow.
    public typealias Keeper = (Paused) -> Void
    private var keeper: Keeper?
    /// Records a request about to change the device (Transport.notePending).
    public typealias PendingKeeper = (UnsafeRawBufferPointer) -> Void
    private var pendingKeeper: PendingKeeper?

    /// Keeps the server's state with `keeper` from here, saving it once
    /// now, and requests about to change it with `pending`. Call before
    /// `start` (no thread may hold the device yet).
    public func keepState(with keeper: @escaping Keeper, pending: PendingKeeper? = nil) {
        self.keeper = keeper
        pendingKeeper = pending
        keeper(Paused(listener: listenerNow, connection: resumedSession))
    }

    /// Saves the state now (nothing attached; a planned restart after `pause`, or after a change made from outside).
    public func saveState(_ paused: Paused) { keeper?(paused) }

    private var listenerNow: Int32? { locked { $0.listen >= 0 ? $0.listen : nil } }

    /// What a paused server is made of, for the handover: the listener, and
    /// the attached client's socket and parked endpoint, if any. The
    /// descriptors are still the server's.
    public struct Paused {
        public var listener: Int32?
        public var connection: (socket: Int32, endpoint: SocketEndpoint)?
    }

    /// Stops the device between messages: the acceptor accepts nothing, the
    /// session (if a client is attached) finishes the request it is on and
    /// parks; a management borrow is waited out. Returns what the server
    /// holds, to be written into a handover; `resume` undoes it. Nil when
    /// the server has stopped or did not hold still within `seconds` (then
    /// nothing is paused).
    public func pause(seconds: Double = 5) -> Paused? {
        guard requestPause() else { return nil }
        return awaitPause(seconds: seconds)
    }

    /// The first half of `pause`, which returns at once: the acceptor and
    /// the session are asked to hold still. Many servers asked first and
    /// waited for after (`awaitPause`) hold still in the time of the
    /// slowest, not of all in turn. False when stopped or already pausing.
    public func requestPause() -> Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard !state.stopped, !state.pauseRequested else { return false }
        state.pauseRequested = true
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        if state.owner == .client, state.parked == nil, let session = state.serving {
            _ = umdev_kick_thread(UInt(bitPattern: Int(bitPattern: session)))
        }
        return true
    }

    /// The second half of `pause`: waits until the server holds still and
    /// returns what it holds; nil (and the request withdrawn) when it
    /// stopped or did not hold still within `seconds`.
    public func awaitPause(seconds: Double = 5) -> Paused? {
        let deadline = monotonicNanoseconds() + UInt64(max(0, seconds) * 1e9)
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard state.pauseRequested else { return nil }
        while !state.stopped {
            let acceptorHeld = !state.acceptorRunning || state.acceptorPaused
            let sessionHeld = state.owner == .nobody || (state.owner == .client && state.parked != nil)
            if acceptorHeld && sessionHeld {
                return Paused(listener: state.listen >= 0 ? state.listen : nil,
                              connection: state.parked.map { (state.connection, $0) })
            }
            let now = monotonicNanoseconds()
            if now >= deadline { break }
            if state.owner == .client, state.parked == nil, let session = state.serving {
                // Knock until it hears: a signal that lands between two
                // system calls interrupts nothing, the next one will.
                _ = umdev_kick_thread(UInt(bitPattern: Int(bitPattern: session)))
            }
            wait(until: min(deadline, now + 1_000_000))
        }
        state.pauseRequested = false
        pthread_cond_broadcast(changed)
        return nil
    }

    /// Ends a pause: the session goes on from the message it stopped at,
    /// the acceptor accepts again.
    public func resume() {
        locked { $0.pauseRequested = false }
        pthread_cond_broadcast(changed)
    }

    /// On the session thread, between messages: parks while a pause lasts.
    private func parkIfAsked(_ endpoint: SocketEndpoint) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard state.pauseRequested else { return }
        state.parked = endpoint
        pthread_cond_broadcast(changed)
        while state.pauseRequested && !state.stopped { pthread_cond_wait(changed, lock) }
        state.parked = nil
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
        defer {
            // Whatever the borrow changed (state loaded, a reset) is what a restart resumes.
            keeper?(Paused(listener: listenerNow, connection: nil))
            vacate()
        }
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
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        if listen >= 0 { shutdown(listen, Int32(SHUT_RDWR)) }
        if let t = acceptThread { pthread_join(t, nil); acceptThread = nil }
        if let t = locked({ s -> pthread_t? in defer { s.session = nil }; return s.session }) { pthread_join(t, nil) }
        if listen >= 0 { close(listen); if ownsSocketFile { unlink(path) } }
    }
}
