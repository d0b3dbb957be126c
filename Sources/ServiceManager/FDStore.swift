import CShim
import Glibc

/// The service manager's end of the protocol `ServiceManager` speaks:
/// a `$NOTIFY_SOCKET` datagram socket whose messages it reads as they come,
/// keeping descriptors sent with `FDSTORE=1` under their `FDNAME=` and
/// closing those named by `FDSTOREREMOVE=1`, as systemd documents its fd
/// store (systemd.io/FILE_DESCRIPTOR_STORE); and starting a service with
/// what it keeps, from descriptor 3, named by `$LISTEN_FDS`,
/// `$LISTEN_FDNAMES` and `$LISTEN_PID`. The tests and the benchmarks play
/// systemd with it.
public final class FDStore: @unchecked Sendable {
    // @unchecked: every mutable field is behind `lock`; `socket` is read by the reader thread and deinit only.
    /// The socket's path, for `$NOTIFY_SOCKET`.
    public let path: String
    private let socket: Int32
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var entries: [(name: String, fd: Int32)] = []
    private var readyCount = 0
    private var stoppingCount = 0
    private var done = false
    /// The reader has taken a message off the socket and not yet applied it.
    private var busy = false
    private var reader: pthread_t?
    /// Most descriptors kept, as FileDescriptorStoreMax= bounds systemd's.
    public let limit: Int

    /// Binds a datagram socket at `path`.
    public init(path: String, limit: Int = 4096) throws(StoreError) {
        self.path = path
        self.limit = limit
        pthread_mutex_init(lock, nil)
        unlink(path)
        socket = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard socket >= 0, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw StoreError("cannot make a socket at \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes + [0]) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let e = errno
            close(socket)
            throw StoreError("cannot bind \(path): \(String(cString: strerror(e)))")
        }
        let unmanaged = Unmanaged.passUnretained(self).toOpaque()
        var t = pthread_t()
        guard pthread_create(&t, nil, { arg in
            Unmanaged<FDStore>.fromOpaque(arg!).takeUnretainedValue().read()
            return nil
        }, unmanaged) == 0 else {
            close(socket)
            throw StoreError("cannot start the store's reader thread")
        }
        reader = t
    }

    public struct StoreError: Error, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }

    private func read() {
        var buf = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: 253)
        while !locked({ done }) {
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 50) > 0 else { continue }
            locked { busy = true }
            var n: Int32 = 0, truncated: Int32 = 0
            let got = umdev_recvmsg(socket, &buf, buf.count, Int32(MSG_DONTWAIT), &fds, Int32(fds.count), &n, &truncated)
            guard got > 0 else { locked { busy = false }; continue }
            let lines = String(decoding: buf[0..<got], as: UTF8.self).split(separator: "\n").map(String.init)
            let name = lines.first { $0.hasPrefix("FDNAME=") }.map { String($0.dropFirst(7)) } ?? "stored"
            let received = Array(fds[0..<Int(n)])
            locked {
                if lines.contains("FDSTORE=1") && ServiceManager.isValidFDName(name) {
                    for f in received {
                        if entries.count < limit { entries.append((name, f)) } else { close(f) }
                    }
                } else {
                    for f in received { close(f) }
                }
                if lines.contains("FDSTOREREMOVE=1") {
                    for e in entries where e.name == name { close(e.fd) }
                    entries.removeAll { $0.name == name }
                }
                if lines.contains("READY=1") { readyCount += 1 }
                if lines.contains("STOPPING=1") { stoppingCount += 1 }
                busy = false
            }
        }
    }

    /// Waits until every message already sent has been applied, as systemd
    /// reads a service's notifications before it acts on its exit: what a
    /// process stored just before it exited is in the store when the next
    /// one starts.
    public func settle(seconds: Double = 5) {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while monotonicNanoseconds() < deadline {
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 0) == 0 && !locked({ busy }) { return }
            usleep(500)
        }
    }

    /// How many READY=1 have come so far.
    public var readies: Int { locked { readyCount } }
    /// What the store keeps once every message already sent is applied,
    /// in the order it came: a process that stored descriptors and exited
    /// finds them here, however far behind the reader thread is.
    public var stored: [(name: String, fd: Int32)] {
        settle()
        return locked { entries }
    }

    /// Waits until `count` READY=1 have come or `seconds` pass.
    public func waitReadies(_ count: Int, seconds: Double = 30) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while monotonicNanoseconds() < deadline {
            if readies >= count { return true }
            usleep(2_000)
        }
        return false
    }

    /// Keeps a copy of `fd` under `name` as if the service had stored it (a
    /// test's way to put what a confused or hostile service could into the store).
    public func add(_ fd: Int32, name: String) {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
        guard copy >= 0 else { return }
        locked { entries.append((name, copy)) }
    }

    /// Closes and forgets everything kept (what systemd does on a stop).
    public func flush() {
        locked {
            for e in entries { close(e.fd) }
            entries = []
        }
    }

    /// Starts `executable` with `arguments` as the manager would:
    /// `$NOTIFY_SOCKET` set, what the store keeps from descriptor 3 (the
    /// store keeps its copies, as systemd does until the service removes
    /// them), and `$LISTEN_*` naming it for this child: a shell sets
    /// `LISTEN_PID` to its own pid, then execs. `stderr`: a file for the
    /// child's standard error (appended), or nil to keep ours; `stdout`:
    /// whether the child keeps ours (else /dev/null).
    public func start(_ executable: String, _ arguments: [String], stderr: String? = nil, stdout: Bool = false,
                      environment: [String: String] = [:]) throws(StoreError) -> pid_t {
        let kept = stored
        // Out of the way of 3..: the copies the child's dup2s read from.
        let high = kept.map { fcntl($0.fd, F_DUPFD_CLOEXEC, 1000) }
        defer { for h in high where h >= 0 { close(h) } }
        guard !high.contains(-1) else { throw StoreError("cannot duplicate the stored descriptors") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if !stdout { posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0) }
        if let stderr { posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o600) }
        for (i, h) in high.enumerated() { posix_spawn_file_actions_adddup2(&actions, h, 3 + Int32(i)) }
        let names = kept.map(\.name).joined(separator: ":")
        let script = kept.isEmpty ? "exec \"$0\" \"$@\""
            : "LISTEN_PID=$$ LISTEN_FDS=\(kept.count) LISTEN_FDNAMES='\(names)' exec \"$0\" \"$@\""
        let argv = ["/bin/sh", "-c", script, executable] + arguments
        let env = ServiceManager.environment(removing: ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"],
                                             setting: [("NOTIFY_SOCKET", path)] + environment.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        var cArgs = argv.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, "/bin/sh", &actions, nil, &cArgs, &cEnv)
        guard rc == 0 else { throw StoreError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        return child
    }

    deinit {
        locked { done = true }
        if let reader { pthread_join(reader, nil) }
        flush()
        close(socket)
        unlink(path)
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

}
