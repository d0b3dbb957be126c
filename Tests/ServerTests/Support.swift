import CShim
import Foundation
import Glibc
import Locking
import Logging
import PCI
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient
import VFIOUserServer

/// The logger the servers under test get: only what would be a crash.
let quietLogger: Logger = {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    return logger
}()

/// A unique socket path for one test.
func socketPath(_ tag: String = "t") -> String {
    "/tmp/umdev-test-\(getpid())-\(tag)-\(UInt32.random(in: 0...UInt32.max)).sock"
}

/// A device a test connects clients to: over a socket (LiveServer) or over memory (MemoryServer).
protocol ServedDevice {
    func connect(negotiate: Bool) throws -> VFIOUserClient
}

extension LiveServer: ServedDevice {}
extension MemoryServer: ServedDevice {}

/// A device served in this process on its own thread, over a real socket:
/// for tests of socket behaviour (threads, stalls, descriptors across
/// processes). Protocol tests use MemoryServer.
final class LiveServer {
    let server: DeviceServer
    let path: String
    let device: VFIODevice

    init(_ device: VFIODevice, type: String = "test") throws {
        self.device = device
        path = socketPath(type)
        server = try DeviceServer(host: DeviceHost(device: device, typeName: type), path: path, logger: quietLogger)
        server.start()
    }

    convenience init(mappable: Bool = true) throws { try self.init(TestDevice(mappable: mappable)) }

    func connect(negotiate: Bool = true) throws -> VFIOUserClient {
        let c = try VFIOUserClient(path: path)
        if negotiate { try c.negotiate() }
        return c
    }

    deinit { server.stop() }
}

/// A message built by hand, for malformed input.
func rawMessage(id: UInt16 = 7, command: UInt16, flags: UInt32 = 0, error: UInt32 = 0, size: UInt32? = nil, payload: [UInt8] = []) -> [UInt8] {
    var m = [UInt8](repeating: 0, count: 16)
    m.withUnsafeMutableBytes {
        Header(messageID: id, command: command, messageSize: size ?? UInt32(16 + payload.count), flags: flags, error: error).store(to: $0.baseAddress!)
    }
    return m + payload
}

/// Sends raw bytes and returns the reply's errno (0 for success).
func errnoOf(_ client: VFIOUserClient, _ bytes: [UInt8], fds: [Int32] = []) throws -> Int32 {
    try client.sendRaw(bytes, fds: fds)
    let r = try client.receiveMessage(timeout: 5000)
    for fd in r.fds { close(fd) }
    #expect(r.header.isReply)
    return r.header.isError ? Int32(r.header.error) : 0
}

/// Asserts the connection still answers a valid request.
func expectAlive(_ client: VFIOUserClient, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(throws: Never.self, sourceLocation: sourceLocation) { _ = try client.deviceInfo() }
}

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }

func eventfd() -> Int32 { umdev_eventfd(0) }

/// Reads an eventfd's counter; 0 if it was not signalled.
func drain(_ fd: Int32) -> UInt64 {
    var v: UInt64 = 0
    return read(fd, &v, 8) == 8 ? v : 0
}

/// Waits up to `ms` for an eventfd to be signalled and returns its counter.
func waitSignal(_ fd: Int32, ms: Int32 = 2000) -> UInt64 {
    pollFor(fd, seconds: Double(ms) / 1000) & Int16(POLLIN) != 0 ? drain(fd) : 0
}

/// The umdev executable next to the test bundle.
/// A product built beside the tests: `umdev` by default, or `umdev-bench`.
func umdevExecutable(_ name: String = "umdev") -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    let exe = String(decoding: buf[0..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var dir = (exe as NSString).deletingLastPathComponent
    // swift-testing runs inside X.xctest; the products are beside it.
    while !FileManager.default.isExecutableFile(atPath: dir + "/" + name), dir != "/" {
        dir = (dir as NSString).deletingLastPathComponent
    }
    return dir + "/" + name
}

/// `umdev serve` in a child process, its output sent to /dev/null so it
/// never holds the test runner's pipes open.
final class ServerProcess {
    let pid: pid_t
    let path: String

    /// `environment` adds to (or overrides) this process's variables. Returns
    /// once the server says READY=1 (every socket it serves listens), as
    /// systemd would hear it; the test's own NOTIFY_SOCKET, if it passes one,
    /// is left for the test to wait on.
    init(type: String, extraArguments: [String] = [], environment: [String: String] = [:],
         sourceLocation: SourceLocation = #_sourceLocation) throws {
        let manager = environment["NOTIFY_SOCKET"] == nil ? try NotifySocket() : nil
        let environment = environment.merging(manager?.environment ?? [:]) { $1 }
        path = socketPath(type)
        let argv = [umdevExecutable(), "serve", "--type", type, "--socket", path, "--log-level", "critical"] + extraArguments
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var child: pid_t = 0
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        var cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { cEnv.forEach { free($0) } }
        let rc = posix_spawn(&child, argv[0], &actions, nil, &cArgs, &cEnv)
        guard rc == 0 else { throw ClientError.system(rc, "posix_spawn \(argv[0])") }
        pid = child
        if let manager {
            let pid = child
            manager.waitReady("umdev serve --type \(type)", exited: { waitpid(pid, nil, WNOHANG) != 0 },
                              sourceLocation: sourceLocation)
        }
    }

    var isRunning: Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == 0
    }

    /// Descriptors the server process holds, by number.
    func openFDs() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).sorted()
    }

    deinit {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        // Killed, the server removes neither its socket nor a display device's display socket.
        unlink(path)
        unlink(path + ".display")
    }
}

/// What a `umdev` command printed and how it exited.
struct CommandOutcome {
    var status: Int32
    var out: String
    var err: String
}

/// Runs the `umdev` executable with `arguments` and waits for it.
func runUmdev(_ arguments: [String], program: String = "umdev") throws -> CommandOutcome {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: umdevExecutable(program))
    p.arguments = arguments
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return CommandOutcome(status: p.terminationStatus, out: String(decoding: o, as: UTF8.self), err: String(decoding: e, as: UTF8.self))
}

/// Log lines ("level message key=value ..."), kept for assertions.
final class LogCapture: Sendable {
    let lines = Locked<[String]>([])
    var all: [String] { lines.withLock { $0 } }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let meta = (event.metadata ?? [:]).merging(metadata) { a, _ in a }
            let text = (["\(event.level) \(event.message)"] + meta.keys.sorted().map { "\($0)=\(meta[$0]!)" }).joined(separator: " ")
            capture.lines.withLock { $0.append(text) }
        }
    }

    var logger: Logger { Logger(label: "test") { _ in Handler(capture: self) } }
}
