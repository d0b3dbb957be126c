import CShim
import Foundation
import Glibc
import Synchronization
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient

/// The service manager's side of sd_notify(3) and the fd store, as
/// systemd documents it (systemd.io/FILE_DESCRIPTOR_STORE): a datagram
/// socket whose messages are read as they come; descriptors sent with
/// `FDSTORE=1` are kept under their `FDNAME=`, `FDSTOREREMOVE=1` closes and
/// forgets them; a start passes what is kept as `LISTEN_FDS`,
/// `LISTEN_FDNAMES` and `LISTEN_PID`, from descriptor 3.
private final class FDStoreManager: @unchecked Sendable {
    // @unchecked: `state` is behind a Mutex; `fd` is only read by the reader thread and `deinit`.
    let path: String
    private let fd: Int32
    private struct State {
        var store: [(name: String, fd: Int32)] = []
        var readies = 0
        var stopping = false
        var done = false
    }
    private let state = Mutex(State())
    private var reader: Thread?

    init() throws {
        path = "/tmp/umdev-fdstore-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0 else { throw ClientError.system(errno, "bind \(path)") }
        let t = Thread { [self] in read() }
        reader = t
        t.start()
    }

    private func read() {
        var buf = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: 253)
        while !state.withLock({ $0.done }) {
            guard pollFor(fd, seconds: 0.05) & Int16(POLLIN) != 0 else { continue }
            var n: Int32 = 0, truncated: Int32 = 0
            let got = umdev_recvmsg(fd, &buf, buf.count, Int32(MSG_DONTWAIT), &fds, Int32(fds.count), &n, &truncated)
            guard got > 0 else { continue }
            let lines = String(decoding: buf[0..<got], as: UTF8.self).split(separator: "\n").map(String.init)
            let name = lines.first { $0.hasPrefix("FDNAME=") }.map { String($0.dropFirst(7)) } ?? "stored"
            let received = Array(fds[0..<Int(n)])
            state.withLock { s in
                if lines.contains("FDSTORE=1") {
                    for f in received { s.store.append((name, f)) }
                } else {
                    for f in received { close(f) }
                }
                if lines.contains("FDSTOREREMOVE=1") {
                    for e in s.store where e.name == name { close(e.fd) }
                    s.store.removeAll { $0.name == name }
                }
                if lines.contains("READY=1") { s.readies += 1 }
                if lines.contains("STOPPING=1") { s.stopping = true }
            }
        }
    }

    var readies: Int { state.withLock { $0.readies } }
    var stored: [(name: String, fd: Int32)] { state.withLock { $0.store } }

    /// Waits until `count` READY=1 have come.
    func waitReadies(_ count: Int, seconds: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if readies >= count { return true }
            usleep(5_000)
        }
        return false
    }

    /// Starts `arguments` of umdev as the manager would: NOTIFY_SOCKET, and
    /// what the store keeps from descriptor 3 with LISTEN_* naming them and
    /// this child (a shell sets LISTEN_PID to its own pid, then execs umdev).
    func start(_ arguments: [String], log: String) throws -> pid_t {
        let kept = stored
        // Out of the way of 3..: the copies the child's dup2s read from.
        let high = kept.map { fcntl($0.fd, F_DUPFD_CLOEXEC, 1000) }
        defer { for h in high { close(h) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        for (i, h) in high.enumerated() { posix_spawn_file_actions_adddup2(&actions, h, 3 + Int32(i)) }
        let names = kept.map(\.name).joined(separator: ":")
        let script = kept.isEmpty ? "exec \"$0\" \"$@\"" : "LISTEN_PID=$$ LISTEN_FDS=\(kept.count) LISTEN_FDNAMES='\(names)' exec \"$0\" \"$@\""
        let argv = ["/bin/sh", "-c", script, umdevExecutable()] + arguments
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = path
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "FDSTORE"] { env[k] = nil }
        var cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { cEnv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, "/bin/sh", &actions, nil, &cArgs, &cEnv)
        guard rc == 0 else { throw ClientError.system(rc, "posix_spawn") }
        return child
    }

    deinit {
        state.withLock { $0.done = true }
        while let t = reader, !t.isFinished { usleep(1000) }
        for e in stored { close(e.fd) }
        close(fd)
        unlink(path)
    }
}

@Suite("umdev daemon: a planned restart through the fd store", .serialized)
struct DaemonRestartTests {
    static let testUUID = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    static let mttyUUID = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a"

    /// SIGTERM with an fd store hands every instance to the manager; the
    /// next start takes them back and the clients, which never noticed,
    /// get every request answered, twice over.
    @Test func aRestartLosesNoRequestAndNoDevice() throws {
        let dir = "/tmp/umdev-restart-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let run = dir + "/run", log = dir + "/log"
        let manager = try FDStoreManager()
        let arguments = ["daemon", "--run-dir", run, "--config-dir", dir + "/config", "--fd-store", "--log-level", "info"]
        var pid = try manager.start(arguments, log: log)
        defer { kill(pid, SIGKILL); waitpid(pid, nil, 0) }
        #expect(manager.waitReadies(1))
        func umdev(_ a: [String]) throws -> CommandOutcome { try runUmdev(a + ["--run-dir", run]) }
        #expect(try umdev(["start", "--uuid", Self.testUUID, "--type", "test"]).status == 0)
        #expect(try umdev(["start", "--uuid", Self.mttyUUID, "--type", "mtty-2"]).status == 0)
        let attached = try AttachedClient(path: "\(run)/\(Self.testUUID).sock")
        let serial = try VFIOUserClient(path: "\(run)/\(Self.mttyUUID).sock")
        try serial.negotiate()
        try serial.write8(region: 0, offset: 2, 0x01)      // FIFO on
        for b in Array("kept".utf8) { try serial.write8(region: 0, offset: 0, b) }
        let listed = try umdev(["list", "--dumpjson"]).out
        #expect(listed.contains("attached"))

        let stop = Atomic<Bool>(false)
        let answered = Atomic<Int>(0)
        let failures = Mutex<[String]>([])
        nonisolated(unsafe) let client = attached.client
        let streamer = Thread {
            while !stop.load(ordering: .relaxed) {
                do {
                    let v = try client.read32(region: 0, offset: TestDevice.Register.scratch)
                    if v != 0xfeed_f00d { failures.withLock { $0.append("read \(v)") } }
                    answered.add(1, ordering: .relaxed)
                } catch {
                    failures.withLock { $0.append("\(error)") }
                    return
                }
            }
        }
        streamer.start()
        for round in 1...2 {
            let before = answered.load(ordering: .relaxed)
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            #expect(status == 0, "restart \(round): the daemon exits 0 once the store holds everything")
            let names = manager.stored.map(\.name)
            #expect(names.contains("umdev-handover") && names.filter { $0.hasPrefix("umdev-fd-") }.count >= 4, "\(names)")
            pid = try manager.start(arguments, log: log)
            #expect(manager.waitReadies(1 + round), "restart \(round)")
            let deadline = Date().addingTimeInterval(10)
            while answered.load(ordering: .relaxed) < before + 100 && Date() < deadline && failures.withLock({ $0.isEmpty }) { usleep(1000) }
            // The new process took its descriptors back and told the manager to let them go.
            let left = Date().addingTimeInterval(10)
            while !manager.stored.isEmpty && Date() < left { usleep(5_000) }
            #expect(manager.stored.isEmpty, "\(manager.stored.map(\.name))")
        }
        stop.store(true, ordering: .relaxed)
        while !streamer.isFinished { usleep(1000) }
        #expect(failures.withLock { $0 } == [])
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.components(separatedBy: "took over 2 instance(s)").count - 1 == 2, "\(text)")
        #expect(text.contains("through the fd store"))
        #expect(try umdev(["list", "--dumpjson"]).out == listed)
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        var got: [UInt8] = []
        while try serial.read8(region: 0, offset: 5) & 0x01 != 0 { got.append(try serial.read8(region: 0, offset: 0)) }
        #expect(got == Array("kept".utf8))
    }

    /// `umdev serve --fd-store` the same way: SIGTERM stores the device
    /// and its client, the next start takes them back.
    @Test func serveRestartsWithItsClient() throws {
        let dir = "/tmp/umdev-restart-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/mtty.sock", log = dir + "/log"
        let manager = try FDStoreManager()
        let arguments = ["serve", "--type", "mtty-2", "--socket", path, "--fd-store", "--log-level", "info"]
        var pid = try manager.start(arguments, log: log)
        defer { kill(pid, SIGKILL); waitpid(pid, nil, 0) }
        #expect(manager.waitReadies(1))
        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        let intx = umdev_eventfd(0)
        defer { close(intx) }
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [intx])
        try c.write8(region: 0, offset: 7, 0x3c)
        try c.write8(region: 0, offset: 2, 0x01)
        try c.write8(region: 0, offset: 1, 0x01)
        for round in 1...2 {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            #expect(status == 0)
            #expect(access(path, F_OK) == 0, "the socket file stays for the next start")
            pid = try manager.start(arguments, log: log)
            #expect(manager.waitReadies(1 + round))
        }
        #expect(try c.read8(region: 0, offset: 7) == 0x3c)
        try c.write8(region: 0, offset: 0, 0x41)
        #expect(waitSignal(intx) == 1, "the RX interrupt reached the eventfd registered before the restarts")
        #expect(try c.read8(region: 0, offset: 0) == 0x41)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.components(separatedBy: "through the fd store").count - 1 == 2, "\(text)")
        let left = Date().addingTimeInterval(10)
        while !manager.stored.isEmpty && Date() < left { usleep(5_000) }
        #expect(manager.stored.isEmpty)
    }

    /// Without an fd store, SIGTERM stops every instance as before.
    @Test func withoutAStoreSIGTERMStopsAsBefore() throws {
        let dir = "/tmp/umdev-restart-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let run = dir + "/run", log = dir + "/log"
        let manager = try FDStoreManager()
        let pid = try manager.start(["daemon", "--run-dir", run, "--config-dir", dir + "/config", "--log-level", "info"], log: log)
        defer { kill(pid, SIGKILL); waitpid(pid, nil, 0) }
        #expect(manager.waitReadies(1))
        #expect(try runUmdev(["start", "--uuid", Self.testUUID, "--type", "test", "--run-dir", run]).status == 0)
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(status == 0)
        #expect(manager.stored.isEmpty)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: run)) ?? []
        #expect(left == [], "sockets left behind: \(left)")
    }
}
