import CShim
import Glibc

/// systemd's service-manager protocol, from the service's side and without
/// libsystemd: readiness and status (sd_notify(3), `$NOTIFY_SOCKET`) and
/// descriptors handed over by socket activation (sd_listen_fds(3),
/// `$LISTEN_PID`, `$LISTEN_FDS`, `$LISTEN_FDNAMES`). Any manager that speaks
/// the same protocol (a test, a supervisor) works the same way.
public enum ServiceManager {
    /// The first descriptor socket activation passes (SD_LISTEN_FDS_START).
    public static let firstListenFD: Int32 = 3

    /// Whether a manager listens for notifications.
    public static var notifies: Bool { notifySocket != nil }

    private static var notifySocket: String? {
        guard let p = getenv("NOTIFY_SOCKET") else { return nil }
        let s = String(cString: p)
        return s.hasPrefix("/") || s.hasPrefix("@") ? s : nil
    }

    /// Sends `state` (newline-separated assignments: `READY=1`,
    /// `STATUS=…`, `STOPPING=1`, `FDSTORE=1` …) in one datagram, with `fds`
    /// attached. Returns false when no manager listens or the send failed:
    /// a service runs the same without one. While the manager's queue is
    /// full (it is busy: a READY=1 it never sees would make it give up on
    /// the service) the send waits for room, but at most `waitSeconds`: a
    /// manager that stopped reading costs a notification, never a device's
    /// service.
    @discardableResult
    public static func notify(_ state: String, fds: [Int32] = [], waitSeconds: Double = 1) -> Bool {
        send(state, fds: fds, waitSeconds: waitSeconds)
    }

    // MARK: The file-descriptor store

    /// How many descriptors the manager keeps for this service: `$FDSTORE`
    /// (systemd 254 and later set it from FileDescriptorStoreMax=), nil when
    /// the manager does not say.
    public static var fdStoreSize: Int? {
        guard notifySocket != nil, let p = getenv("FDSTORE"), let n = Int(String(cString: p)), n > 0 else { return nil }
        return n
    }

    /// Hands `fd` to the manager to keep under `name` (`FDSTORE=1`,
    /// `FDNAME=`); it comes back in `$LISTEN_FDS`/`$LISTEN_FDNAMES` when the
    /// service starts again. Unlike a notification, a store must not be
    /// lost: while the manager's queue is full it waits, up to `seconds`.
    public static func store(_ fd: Int32, name: String, seconds: Double = 5) -> Bool {
        send("FDSTORE=1\nFDNAME=\(name)", fds: [fd], waitSeconds: seconds)
    }

    /// Asks the manager to close and forget what it keeps under `name` (`FDSTOREREMOVE=1`).
    @discardableResult
    public static func removeStored(name: String, seconds: Double = 5) -> Bool {
        send("FDSTOREREMOVE=1\nFDNAME=\(name)", fds: [], waitSeconds: seconds)
    }

    /// Whether `name` can be an FDNAME=: 1 to 255 printable ASCII characters but ':'.
    public static func isValidFDName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255 && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ":") }
    }

    /// One datagram to the manager; on a full queue, waits for room up to `waitSeconds` (0: not at all).
    private static func send(_ state: String, fds: [Int32], waitSeconds: Double) -> Bool {
        guard let path = notifySocket else { return false }
        let s = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard s >= 0 else { return false }
        defer { close(s) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 } // abstract namespace
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            p.copyBytes(from: bytes)
        }
        // An abstract address's length counts its bytes exactly; a path's includes its NUL.
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes[0] == 0 ? 0 : 1))
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, length) }
        }
        guard connected == 0 else { return false }
        let text = Array(state.utf8)
        let deadline = monotonicNanoseconds() + UInt64(max(0, waitSeconds) * 1e9)
        while true {
            let sent = text.withUnsafeBytes { b in
                fds.withUnsafeBufferPointer { f in
                    umdev_sendmsg(s, b.baseAddress, b.count, f.isEmpty ? nil : f.baseAddress, Int32(f.count))
                }
            }
            if sent == text.count { return true }
            let e = errno
            guard sent < 0, e == EAGAIN || e == EINTR, monotonicNanoseconds() < deadline else { return false }
            var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, 10)
        }
    }

    /// This process's environment as `NAME=value` entries for a child:
    /// without the variables `removing` names or `setting` assigns, then
    /// `setting`'s assignments in order.
    public static func environment(removing: [String] = [], setting: [(name: String, value: String)] = []) -> [String] {
        let dropped = removing + setting.map(\.name)
        var env: [String] = []
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if !dropped.contains(where: { s.hasPrefix($0 + "=") }) { env.append(s) }
            p += 1
        }
        return env + setting.map { "\($0.name)=\($0.value)" }
    }

    /// A descriptor handed over by socket activation (or the fd store).
    public struct ListenedFD: Equatable, Sendable {
        public var fd: Int32
        /// Its `FileDescriptorName=` (or FDNAME=), "unknown" when unnamed.
        public var name: String
    }

    /// The descriptors passed to this process, in order from fd 3, marked
    /// close-on-exec. Empty unless `$LISTEN_PID` is this process. The
    /// variables are removed so a child does not take them for its own.
    public static func listenFDs() -> [ListenedFD] {
        defer { unsetenv("LISTEN_PID"); unsetenv("LISTEN_FDS"); unsetenv("LISTEN_FDNAMES") }
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }), let pid = pid_t(pidText), pid == getpid(),
              let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }), let count = Int32(countText),
              count > 0, count <= 4096
        else { return [] }
        let names = getenv("LISTEN_FDNAMES").map { String(cString: $0).split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        return (0..<count).compactMap { i in
            let fd = firstListenFD + i
            guard fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else { return nil }
            let name = Int(i) < names.count && !names[Int(i)].isEmpty ? names[Int(i)] : "unknown"
            return ListenedFD(fd: fd, name: name)
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
