import CShim
import Glibc
import PCI
import UnixSocket

/// Where a port's line goes.
public enum SerialBackend: Sendable, Equatable {
    /// As the Linux sample: what the guest transmits comes back on its receive side.
    case loopback
    /// A host pseudo-terminal; `screen /dev/pts/N` talks to the guest.
    case pty
    /// A UNIX stream socket at this path; one peer at a time.
    case unixSocket(String)

    /// Parses `loopback`, `pty` or `unix:PATH`.
    public init?(argument: String) {
        switch argument {
        case "loopback": self = .loopback
        case "pty": self = .pty
        default:
            guard argument.hasPrefix("unix:"), argument.count > 5 else { return nil }
            self = .unixSocket(String(argument.dropFirst(5)))
        }
    }
}

/// The host side of a non-loopback port: a pty master, or a listening
/// socket and its one accepted peer. Non-blocking descriptors, read and
/// written only in `service`, which the owner thread calls when poll(2)
/// reports them ready; `send`, on the register-access path, only queues.
final class HostLine {
    let kind: SerialBackend
    /// Where a user connects: the pty slave path or the socket path.
    let name: String
    private var listener: Int32 = -1
    /// The descriptor bytes flow through (pty master, or the accepted peer).
    private(set) var line: Int32 = -1
    /// A pty's slave end, held open so the master never reports a hang-up
    /// (POLLHUP on every poll, a spinning thread) while no user has it open,
    /// or after one closes it.
    private var heldSlave: Int32 = -1
    /// Transmitted bytes the host has not taken yet (bounded).
    private var pendingOutput: [UInt8] = []
    static let maxPendingOutput = 64 * 1024
    /// Whether deinit removes the socket file: not while a line taken over
    /// only to check a handover (the old process still serves on it).
    private var ownsPath = true

    /// `port`: which port this is, the key a handed-over line is claimed by.
    init(_ kind: SerialBackend, port: Int) throws(DeviceError) {
        self.kind = kind
        if let (handed, owning) = HostResourceAdoption.claim(key: "port\(port)") {
            do {
                let taken = try Self.adopt(handed, as: kind, port: port)
                (name, listener, line, heldSlave, pendingOutput) = (taken.name, taken.listener, taken.line, taken.slave, taken.pending)
                ownsPath = owning
            } catch {
                handed.closeAll()
                throw error
            }
            return
        }
        switch kind {
        case .loopback:
            name = "loopback"
        case .pty:
            var buffer = [CChar](repeating: 0, count: 128)
            var slave: Int32 = -1
            let fd = umdev_open_pty(&buffer, buffer.count, &slave)
            guard fd >= 0 else { throw DeviceError(errno, "cannot open a pty") }
            line = fd
            heldSlave = slave
            name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        case .unixSocket(let path):
            let fd: Int32
            // The line owns the listener from here (closed in deinit).
            do { fd = try UnixSocket.listen(path: path, backlog: 1, nonBlocking: true).release().rawValue } catch {
                throw DeviceError(error.errno, error.description)
            }
            listener = fd
            name = path
        }
    }

    deinit {
        if heldSlave >= 0 { close(heldSlave) }
        if line >= 0 { close(line) }
        if listener >= 0 { close(listener) }
        if case .unixSocket(let path) = kind, ownsPath { unlink(path) }
    }

    // MARK: Live upgrade

    private static let ptyKind: UInt8 = 1, socketKind: UInt8 = 2

    /// The line as a live upgrade hands it over: its descriptors (still
    /// the line's), and its kind, name and the output not yet written.
    var hostResource: (descriptors: [HostResource.Descriptor], data: [UInt8]) {
        var w = StateWriter()
        w.u8(listener >= 0 ? Self.socketKind : Self.ptyKind)
        w.name(name)
        w.u32(UInt32(pendingOutput.count)); w.raw(pendingOutput)
        var fds: [HostResource.Descriptor] = []
        if listener >= 0 { fds.append(.init(role: "listener", fd: listener)) }
        if line >= 0 { fds.append(.init(role: listener >= 0 ? "peer" : "master", fd: line)) }
        if heldSlave >= 0 { fds.append(.init(role: "slave", fd: heldSlave)) }
        return (fds, w.bytes)
    }

    /// A handed-over line checked against what this port is configured as:
    /// the same kind (and the same socket path), descriptors of the right
    /// sort (a pty master whose slave is the named one, a listening and a
    /// connected UNIX socket), output within bounds.
    private static func adopt(_ r: HostResource, as kind: SerialBackend, port: Int)
        throws(DeviceError) -> (name: String, listener: Int32, line: Int32, slave: Int32, pending: [UInt8]) {
        var reader = StateReader(fields: r.data, what: "the handover's mtty port \(port)")
        let k = try reader.u8()
        let name = try reader.name()
        let n = Int(try reader.u32())
        guard n <= maxPendingOutput else { throw DeviceError(EINVAL, "the handover's mtty port \(port) has \(n) bytes of output, more than a line holds") }
        let pending = try reader.raw(n)
        try reader.finish()
        func refuse(_ why: String) -> DeviceError { DeviceError(EINVAL, "the handover's mtty port \(port): \(why)") }
        let roles = Set(r.descriptors.map(\.role))
        guard roles.count == r.descriptors.count else { throw refuse("a descriptor role given twice") }
        for d in r.descriptors { _ = fcntl(d.fd, F_SETFL, fcntl(d.fd, F_GETFL) | O_NONBLOCK) }
        switch kind {
        case .loopback:
            throw refuse("a host line for a loopback port")
        case .pty:
            guard k == ptyKind, roles.isSubset(of: ["master", "slave"]), let master = r.fd("master") else {
                throw refuse("not a pty line (master and slave)")
            }
            var buffer = [CChar](repeating: 0, count: 128)
            guard umdev_pty_name(master, &buffer, buffer.count) == 0,
                  String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) == name else {
                throw refuse("its master is not the pty master of \(name.prefix(64))")
            }
            let slave = r.fd("slave") ?? -1
            if slave >= 0 {
                var st = stat()
                guard fstat(slave, &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR, isatty(slave) == 1 else { throw refuse("its slave is not a terminal") }
            }
            return (name, -1, master, slave, pending)
        case .unixSocket(let path):
            guard k == socketKind, name == path, roles.isSubset(of: ["listener", "peer"]), let listener = r.fd("listener") else {
                throw refuse("not the socket line at \(path.prefix(64))")
            }
            guard InheritedSocket.listens(listener, at: path) else {
                throw refuse("its listener is not a socket listening at \(path.prefix(64))")
            }
            let peer = r.fd("peer") ?? -1
            if peer >= 0 {
                guard case .connected? = try? InheritedSocket.check(peer) else { throw refuse("its peer is not a connected UNIX socket") }
            }
            return (name, listener, peer, -1, pending)
        }
    }

    /// The descriptor to poll and for what: the listener until a peer
    /// comes, then the line, with POLLOUT while output waits.
    var pollRequest: (fd: Int32, events: Int16)? {
        if line >= 0 { return (line, Int16(POLLIN) | (pendingOutput.isEmpty ? 0 : Int16(POLLOUT))) }
        if listener >= 0 { return (listener, Int16(POLLIN)) }
        return nil
    }

    /// Services `fd` if it is one of ours: accepts a waiting peer, flushes
    /// output, and returns up to `space` bytes the host sent.
    /// A socket peer that hung up is let go here whatever `space` is: with
    /// a full receive FIFO nothing reads the end of its stream, and its
    /// POLLHUP would come back on every poll.
    func service(fd: Int32, revents: Int16, space: Int) -> [UInt8] {
        if fd == listener { acceptIfReady(); return [] }
        guard fd == line else { return [] }
        if revents & Int16(POLLOUT) != 0 { flush() }
        guard line >= 0, revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 else { return [] }
        let received = read(max: space)
        if listener >= 0, line >= 0, revents & Int16(POLLHUP | POLLERR) != 0, received.count < space || space == 0 {
            peerLeft()
        }
        return received
    }

    /// The socket peer is gone: close its line, drop what was queued for it
    /// (the next peer starts clean) and listen again.
    private func peerLeft() {
        close(line)
        line = -1
        pendingOutput.removeAll(keepingCapacity: true)
    }

    /// Accepts a peer if one is waiting on the listener.
    func acceptIfReady() {
        guard listener >= 0, line < 0 else { return }
        let fd = accept(listener, nil, nil)
        if fd >= 0 {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            line = fd
        }
    }

    /// Reads up to `max` bytes the host sent.
    func read(max: Int) -> [UInt8] {
        guard line >= 0, max > 0 else { return [] }
        var buffer = [UInt8](repeating: 0, count: max)
        let n = Glibc.read(line, &buffer, max)
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR && errno != EIO) {
            if listener >= 0 { peerLeft() } // wait for the next
            return []
        }
        return n > 0 ? Array(buffer[0..<n]) : []
    }

    /// Queues a transmitted byte for the host. No syscall: this runs on a
    /// register access (a THR write), and the host side may be slow or not
    /// reading at all. The byte is written when the owner thread services
    /// the line: `pollRequest` asks POLLOUT while bytes wait, and `service`
    /// flushes on it. Past `maxPendingOutput` bytes are dropped, as a wire
    /// nobody listens on loses them; with no peer they go nowhere.
    func send(_ byte: UInt8) {
        guard line >= 0 else { return }
        if pendingOutput.count < HostLine.maxPendingOutput { pendingOutput.append(byte) }
    }

    /// Writes what the host will take now (non-blocking); the rest waits
    /// for the next POLLOUT. Called from `service` only, on the owner thread.
    func flush() {
        guard line >= 0, !pendingOutput.isEmpty else { return }
        let fd = line
        let socket = listener >= 0
        // A socket peer that left is EPIPE, not SIGPIPE.
        let n = pendingOutput.withUnsafeBytes {
            socket ? Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) : Glibc.write(fd, $0.baseAddress, $0.count)
        }
        guard n > 0 else {
            if socket, n < 0, errno == EPIPE || errno == ECONNRESET { peerLeft() }
            return
        }
        // Keep the buffer: the next transmitted byte should not allocate.
        if n == pendingOutput.count { pendingOutput.removeAll(keepingCapacity: true) } else { pendingOutput.removeFirst(n) }
    }
}
