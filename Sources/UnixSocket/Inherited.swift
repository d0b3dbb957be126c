import Glibc
import SystemPackage

/// A descriptor this process was given (`--fd`, socket activation, a
/// handover), checked before use: it must be an AF_UNIX stream socket,
/// either listening or connected.
public enum InheritedSocket: Equatable, Sendable {
    /// Listening: accept clients on it.
    case listening(FileDescriptor)
    /// Already connected to the client.
    case connected(FileDescriptor)

    /// The descriptor (the process was given it; whoever serves on it owns it).
    public var fd: FileDescriptor {
        switch self { case .listening(let fd), .connected(let fd): return fd }
    }

    /// What descriptor number `fd` (from a command line or the environment)
    /// is, or why it cannot be served on. Marks it close-on-exec.
    public static func check(_ fd: Int32) throws(SocketError) -> InheritedSocket {
        guard fd >= 0, fcntl(fd, F_GETFD) >= 0 else {
            throw SocketError(errno: EBADF, message: "descriptor \(fd) is not open", explained: true)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SocketError(errno: errno, message: "fstat of descriptor \(fd)") }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            let what = st.st_mode & S_IFMT == S_IFREG ? "a regular file" : st.st_mode & S_IFMT == S_IFIFO ? "a pipe"
                : st.st_mode & S_IFMT == S_IFCHR ? "a character device" : "not a socket"
            throw SocketError(errno: ENOTSOCK, message: "descriptor \(fd) is \(what), not a UNIX stream socket", explained: true)
        }
        func option(_ name: Int32) -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        guard option(SO_DOMAIN) == AF_UNIX else {
            throw SocketError(errno: EAFNOSUPPORT, message: "descriptor \(fd) is not an AF_UNIX socket (vfio-user runs over UNIX sockets)", explained: true)
        }
        guard option(SO_TYPE) == Int32(SOCK_STREAM.rawValue) else {
            throw SocketError(errno: ESOCKTNOSUPPORT, message: "descriptor \(fd) is a UNIX socket but not a stream socket", explained: true)
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        if option(SO_ACCEPTCONN) == 1 { return .listening(FileDescriptor(rawValue: fd)) }
        // A stream socket that neither listens nor has a peer serves nobody.
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let connected = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        } == 0
        guard connected else {
            throw SocketError(errno: ENOTCONN, message: "descriptor \(fd) is a UNIX stream socket that neither listens nor is connected", explained: true)
        }
        return .connected(FileDescriptor(rawValue: fd))
    }

    /// Whether `socket` is a listening UNIX socket, and (given `path`) one
    /// whose file is `path`: bound to it, or to the staging name
    /// `UnixSocket.listen` bound first and renamed into place
    /// (`path.PID.new`). What a handover's listener must be before it is
    /// served on.
    public static func listens(_ socket: Int32, at path: String? = nil) -> Bool {
        guard case .listening? = try? check(socket) else { return false }
        guard let path else { return true }
        let bound = boundPath(FileDescriptor(rawValue: socket)) ?? ""
        return bound == path || (bound.hasPrefix(path + ".") && bound.hasSuffix(".new"))
    }

    /// The filesystem path a listening socket is bound to, when it has one.
    public static func boundPath(_ socket: FileDescriptor) -> String? {
        let fd = socket.rawValue
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        } == 0
        guard ok else { return nil }
        let path = withUnsafeBytes(of: &address.sun_path) { raw -> String in
            let end = raw.firstIndex(of: 0) ?? raw.count
            return String(decoding: raw[..<end], as: UTF8.self)
        }
        return path.hasPrefix("/") ? path : nil
    }
}
