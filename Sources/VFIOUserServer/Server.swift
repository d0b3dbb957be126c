import CShim
import Glibc
import Logging
import PCI
import Synchronization
import UnixSocket
import VFIOUser

/// Serves one device on one listening socket, on a thread of its own.
///
/// A vfio-user device has one client at a time: the thread accepts a
/// connection, serves it until it closes, then accepts the next. Each served
/// device has its own thread, so a stalled client of one device never holds
/// up another device.
public final class DeviceServer: @unchecked Sendable {
    // @unchecked: `host` is touched only by the serving thread after `start`;
    // the descriptors shared with `stop` are behind `control`.
    public let host: DeviceHost
    public let path: String
    let logger: Logger
    private let control: Mutex<(listen: Int32, connection: Int32, stopped: Bool)>
    private var thread: pthread_t?

    public init(host: DeviceHost, path: String, logger: Logger) throws(DeviceError) {
        self.host = host
        self.path = path
        self.logger = logger
        let fd: Int32
        do { fd = try UnixSocket.listen(path: path) } catch { throw DeviceError(error.errno, error.description) }
        control = Mutex((fd, -1, false))
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
            let proceed = control.withLock { state -> Bool in
                if state.stopped { return false }
                state.connection = c
                return true
            }
            guard proceed else { close(c); return }
            logger.info("client connected", metadata: ["socket": "\(path)"])
            let endpoint = Endpoint(host: host, socket: c, logger: logger)
            endpoint.run()
            control.withLock { $0.connection = -1 }
            close(c)
            logger.info("client disconnected", metadata: ["socket": "\(path)"])
        }
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
