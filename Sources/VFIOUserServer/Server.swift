import CShim
import Glibc
import Logging
import PCI
import Locking
import UnixSocket
import VFIOUser

/// Serves one device on one listening socket, on a thread of its own.
///
/// A vfio-user device has one client at a time: the thread accepts a
/// connection, serves it until it closes, then accepts the next. Each served
/// device has its own thread, so a stalled client of one device never holds
/// up another device.
///
/// While a client is attached its thread owns the device. Between clients a
/// management thread may borrow it (`withIdleDevice`: reset, save, load,
/// attributes); the next client waits for that to finish. Neither takes a
/// lock per message.
public final class DeviceServer: @unchecked Sendable {
    // @unchecked: `host` is touched only by the serving thread while a
    // client is attached, and by `withIdleDevice` under `session` otherwise;
    // the descriptors shared with `stop` are behind `control`.
    public let host: DeviceHost
    public let path: String
    let logger: Logger
    private struct Control {
        var listen: Int32
        var connection: Int32 = -1
        var clientPID: pid_t?
        var stopped = false
    }
    private let control: Locked<Control>
    /// Held by the serving thread for a whole client session, and by a
    /// management thread while it borrows the idle device.
    private let session = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var thread: pthread_t?

    public init(host: DeviceHost, path: String, logger: Logger) throws(DeviceError) {
        self.host = host
        self.path = path
        self.logger = logger
        let fd: Int32
        do { fd = try UnixSocket.listen(path: path) } catch { throw DeviceError(error.errno, error.description) }
        control = Locked(Control(listen: fd))
        pthread_mutex_init(session, nil)
    }

    deinit {
        pthread_mutex_destroy(session)
        session.deallocate()
    }

    /// Starts the serving thread.
    public func start() {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let server = Unmanaged<DeviceServer>.fromOpaque(arg!).takeRetainedValue()
            server.serve()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed")
        thread = t
    }

    /// Runs the accept/serve loop on the calling thread until `stop`.
    public func serve() {
        while true {
            let listenFD = control.withLock { $0.stopped ? -1 : $0.listen }
            guard listenFD >= 0 else { return }
            let c: Int32
            do { c = try UnixSocket.accept(listenFD) } catch {
                if !control.withLock({ $0.stopped }) { logger.error("\(error)") }
                return
            }
            let peer = Self.peerPID(c)
            pthread_mutex_lock(session)
            let proceed = control.withLock { state -> Bool in
                if state.stopped { return false }
                state.connection = c
                state.clientPID = peer
                return true
            }
            guard proceed else { pthread_mutex_unlock(session); close(c); return }
            logger.info("client connected", metadata: ["socket": "\(path)", "pid": "\(peer.map(String.init) ?? "?")"])
            let endpoint = Endpoint(host: host, socket: c, logger: logger)
            endpoint.run()
            control.withLock { $0.connection = -1; $0.clientPID = nil }
            pthread_mutex_unlock(session)
            close(c)
            logger.info("client disconnected", metadata: ["socket": "\(path)"])
        }
    }

    /// The peer's process id (SO_PEERCRED), if the kernel gives it.
    static func peerPID(_ socket: Int32) -> pid_t? {
        let pid = umdev_peer_pid(socket)
        return pid > 0 ? pid : nil
    }

    // MARK: Management

    /// Whether a client is attached now.
    public var isAttached: Bool { control.withLock { $0.connection >= 0 } }

    /// The attached client's process id, when known.
    public var clientPID: pid_t? { control.withLock { $0.clientPID } }

    /// Runs `body` with the device while no client is attached (a client
    /// arriving meanwhile waits until it returns); nil, without running it,
    /// when a client is attached.
    public func withIdleDevice<T>(_ body: (DeviceHost) throws -> T) rethrows -> T? {
        guard pthread_mutex_trylock(session) == 0 else { return nil }
        defer { pthread_mutex_unlock(session) }
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
        let c = control.withLock { $0.connection }
        if c >= 0 { shutdown(c, Int32(SHUT_RDWR)) }
    }

    /// Waits until no client is attached, up to `seconds`; true if none is.
    public func waitUntilDetached(seconds: Double) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(max(0, seconds) * 1e9)
        while isAttached {
            if monotonicNanoseconds() >= deadline { return false }
            usleep(10_000)
        }
        return true
    }

    /// Stops accepting, ends the current connection, and waits for the thread.
    public func stop() {
        let fds = control.withLock { state -> (Int32, Int32) in
            if state.stopped { return (-1, -1) }
            state.stopped = true
            return (state.listen, state.connection)
        }
        if fds.0 >= 0 { shutdown(fds.0, Int32(SHUT_RDWR)) }
        if fds.1 >= 0 { shutdown(fds.1, Int32(SHUT_RDWR)) }
        if let t = thread { pthread_join(t, nil); thread = nil }
        if fds.0 >= 0 { close(fds.0); unlink(path) }
    }
}
