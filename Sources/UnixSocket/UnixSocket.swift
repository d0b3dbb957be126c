import CShim
import Descriptors
import Glibc
import SystemPackage

/// A socket call that failed: errno and what was being done.
public struct SocketError: Error, Sendable, CustomStringConvertible {
    public let errno: Int32
    public let message: String
    /// The message says it all; strerror would only repeat it.
    public var explained = false
    public var description: String { explained ? message : "\(message): \(String(cString: strerror(errno)))" }

    public init(errno: Int32, message: String, explained: Bool = false) {
        self.errno = errno
        self.message = message
        self.explained = explained
    }
}

/// UNIX stream sockets by path: the vfio-user server, its client, and
/// mtty's socket backend all go through these two calls.
public enum UnixSocket {
    /// Binds and listens at `path`, the socket file owner-only (`mode`,
    /// 0600 by default) from the moment it exists. A stale socket left there
    /// by an earlier run is replaced; any other kind of file is left alone
    /// (EEXIST). The file appears only once the socket accepts connections.
    public static func listen(path: String, backlog: Int32 = 8, nonBlocking: Bool = false, mode: mode_t = 0o600) throws(SocketError) -> OwnedDescriptor {
        var st = stat()
        if lstat(path, &st) == 0 {
            let kind = st.st_mode & S_IFMT
            guard kind == S_IFSOCK else {
                let what = kind == S_IFDIR ? "a directory" : kind == S_IFLNK ? "a symbolic link" : kind == S_IFREG ? "a regular file" : "a special file"
                throw SocketError(errno: EEXIST, message: "cannot listen on \(path): it is \(what), not a socket (umdev replaces only a stale socket there)",
                                  explained: true)
            }
            unlink(path)
        }
        let fd = try open(nonBlocking: nonBlocking)
        // The socket appears at `path` only once it listens: bound under a
        // name beside it, then renamed into place. Whoever waits for the
        // file (a script, QEMU started next) never finds it refusing
        // connections between bind and listen. A path too long for the
        // staging name is bound directly. (`InheritedSocket.listens(_:at:)`
        // knows the staging name.)
        let staged = path + ".\(getpid()).new"
        let direct = staged.utf8.count >= MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        let bound = direct ? path : staged
        if !direct { unlink(staged) }
        // Linux creates the file with the unbound socket's mode (less the
        // umask), so set it before bind; chmod after, for other kernels.
        _ = fchmod(fd, mode)
        var rc = try withAddress(bound) { Glibc.bind(fd, $0, $1) }
        if rc == 0 { _ = chmod(bound, mode) }
        if rc == 0 { rc = Glibc.listen(fd, backlog) }
        // Never over anything: a stale socket at `path` is gone by now, and
        // whatever else is there stays.
        if rc == 0 && !direct { rc = umdev_rename_noreplace(staged, path) }
        guard rc == 0 else {
            let e = errno
            if !direct { unlink(staged) }
            close(fd)
            throw SocketError(errno: e, message: "cannot listen on \(path)")
        }
        return OwnedDescriptor(adopting: FileDescriptor(rawValue: fd))
    }

    /// Accepts the next connection on `listener` (close-on-exec), retrying
    /// when interrupted or when a peer gave up before it was accepted.
    public static func accept(_ listener: FileDescriptor) throws(SocketError) -> OwnedDescriptor {
        while true {
            // Close-on-exec from the start: a process another thread spawns
            // meanwhile must not inherit (and so hold open) the connection.
            let c = umdev_accept_cloexec(listener.rawValue)
            if c >= 0 { return OwnedDescriptor(adopting: FileDescriptor(rawValue: c)) }
            if errno == EINTR || errno == ECONNABORTED { continue }
            throw SocketError(errno: errno, message: "accept")
        }
    }

    /// Connects to the listener at `path`.
    public static func connect(path: String) throws(SocketError) -> OwnedDescriptor {
        let fd = try open(nonBlocking: false)
        let rc = try withAddress(path) { Glibc.connect(fd, $0, $1) }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw SocketError(errno: e, message: "cannot connect to \(path)")
        }
        return OwnedDescriptor(adopting: FileDescriptor(rawValue: fd))
    }

    private static func open(nonBlocking: Bool) throws(SocketError) -> Int32 {
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        let fd = socket(AF_UNIX, type, 0)
        guard fd >= 0 else { throw SocketError(errno: errno, message: "socket(AF_UNIX)") }
        return fd
    }

    /// Calls `body` with a sockaddr_un for `path` (refused when too long).
    private static func withAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) throws(SocketError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw SocketError(errno: ENAMETOOLONG, message: "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
