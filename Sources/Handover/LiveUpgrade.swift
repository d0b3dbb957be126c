import CShim
import Descriptors
import Glibc
import Locking
import Logging
import PCI
import ServiceManager
import SystemPackage
import UnixSocket
import VFIOUserServer

/// A live upgrade: a running umdev replaces itself with the binary now at
/// the path it was started from, handing every device over at a message
/// boundary, and the client notices nothing but a pause.
///
/// 1. A check: the new binary is started beside the old one with the
///    handover (`UMDEV_HANDOVER_CHECK=1`); it reads it, builds the devices
///    and restores their state, and exits 0 without serving. A binary that
///    is missing, exits non-zero, crashes or cannot read the format fails
///    here, and the old process never stopped serving.
/// 2. The switch: the devices stop between messages again, a fresh
///    handover is written, and the process execs the new binary (same pid)
///    with it. If exec itself fails, the old process resumes.
///
/// The handover travels as a memfd (`UMDEV_HANDOVER`, its descriptor
/// number) and the descriptors it names, inherited across exec and listed
/// in order in `UMDEV_HANDOVER_FDS`.
public enum LiveUpgrade {
    /// The version this build of umdev reports in its handovers and logs.
    public static let umdevVersion = "0.18.0"

    static let handoverVariable = "UMDEV_HANDOVER"
    static let descriptorsVariable = "UMDEV_HANDOVER_FDS"
    static let checkVariable = "UMDEV_HANDOVER_CHECK"
    /// Largest handover a reader accepts.
    public static let maxHandover = 256 << 20
    /// How long the check may take before it counts as failed.
    static let checkSeconds = 20.0

    // MARK: Writing

    /// A device ready to be written into a handover.
    public struct Device {
        public var instance: String
        public var host: DeviceHost
        public var paused: DeviceServer.Paused
        public var ownsSocketFile: Bool
        /// Where the socket file is ("" if it has none).
        public var socketPath: String
        /// Sections written just before the device's own (a daemon's instance section).
        public var preface: [Handover.Section]
        /// A display device's display socket, if it has one.
        public var display: DisplaySocket?
        public init(instance: String, host: DeviceHost, paused: DeviceServer.Paused, ownsSocketFile: Bool, socketPath: String,
                    preface: [Handover.Section] = [], display: DisplaySocket? = nil) {
            self.instance = instance; self.host = host; self.paused = paused; self.ownsSocketFile = ownsSocketFile
            self.socketPath = socketPath; self.preface = preface; self.display = display
        }
    }

    /// A display socket: its listener (still the display server's), where
    /// its file is and whether the server removes it on stop.
    public struct DisplaySocket {
        public var listener: Int32
        public var path: String
        public var ownsSocketFile: Bool
        public init(listener: Int32, path: String, ownsSocketFile: Bool) {
            self.listener = listener; self.path = path; self.ownsSocketFile = ownsSocketFile
        }
    }

    /// What `umdev daemon` hands over besides its devices.
    public struct DaemonPart {
        public var controlListener: Int32
        public var ownsControlFile: Bool
        /// The control connection that asked for the upgrade, to be answered by the new process.
        public var requester: Int32?
        public init(controlListener: Int32, ownsControlFile: Bool, requester: Int32?) {
            self.controlListener = controlListener; self.ownsControlFile = ownsControlFile; self.requester = requester
        }
    }

    /// The handover of paused devices: its bytes and the descriptors they
    /// name (still the devices'). Refused, with the reason, for what this
    /// build cannot carry yet.
    public static func write(_ devices: [Device], daemon: DaemonPart? = nil) throws(DeviceError) -> (bytes: [UInt8], fds: [Int32]) {
        var list = DescriptorList()
        return (try write(devices, daemon: daemon, into: &list), list.fds)
    }

    /// The handover's bytes, its descriptors numbered by `list`.
    static func write(_ devices: [Device], daemon: DaemonPart?, into list: inout DescriptorList) throws(DeviceError) -> [UInt8] {
        var sections = [Writer(version: umdevVersion, pid: getpid(), writtenAt: monotonicNanoseconds()).section]
        if let daemon {
            let listener = list.add(daemon.controlListener, role: .controlListener, name: "control")
            let requester = daemon.requester.map { list.add($0, role: .controlConnection, name: "control/upgrade-requester") }
            sections.append(DaemonSection(controlListener: listener, ownsControlFile: daemon.ownsControlFile, requester: requester).section)
        }
        for d in devices {
            let prefix = d.instance.isEmpty ? "" : d.instance + "/"
            guard !d.host.device.hasHostEvents || d.host.device is HostResourceHolder else {
                throw DeviceError(ENOTSUP, "\(d.host.typeName) has host descriptors it cannot hand over")
            }
            guard d.host.device.migrationIdentity != nil else {
                throw DeviceError(ENOTSUP, "\(d.host.typeName) does not save its state")
            }
            let listener = d.paused.listener.map { list.add($0, role: .deviceListener, name: prefix + "listener") }
            var memory: [UInt32] = []
            for (i, r) in d.host.description.regions.enumerated() {
                if let m = r.mapping {
                    let index = list.add(m.fd.rawValue, role: .regionMemory, name: prefix + "region\(i)")
                    if !memory.contains(index) { memory.append(index) }
                }
            }
            sections += d.preface
            sections.append(DeviceSection(instance: d.instance, listener: listener, ownsSocketFile: d.ownsSocketFile,
                                          regionMemory: memory, socketPath: d.socketPath).section)
            if let display = d.host.device as? DisplayDevice {
                let listener = d.display.map { list.add($0.listener, role: .displayListener, name: prefix + "display") }
                sections.append(DisplaySection(instance: d.instance, listener: listener, ownsSocketFile: d.display?.ownsSocketFile ?? false,
                                               socketPath: d.display?.path ?? "", nextPlaneID: display.nextPlaneID,
                                               recent: display.planes.recentPlanes()).section)
            } else if d.display != nil {
                throw DeviceError(EINVAL, "\(d.host.typeName) has no display, but a display socket was given")
            }
            if let holder = d.host.device as? HostResourceHolder {
                let resources = holder.hostResources()
                if !resources.isEmpty {
                    let entries = resources.map { r in
                        HostSection.Entry(key: r.key, descriptors: r.descriptors.map { f in
                            let role: DescriptorRole = f.role == "listener" ? .backendListener : .backendLine
                            return HostSection.Descriptor(f.role, list.add(f.fd, role: role, name: prefix + r.key + "/" + f.role))
                        }, data: r.data)
                    }
                    sections.append(HostSection(instance: d.instance, entries: entries).section)
                }
            }
            // Memory that travels as a descriptor keeps its pages: only a marker is saved for it.
            let state = SharedMemory.savingForHandover { d.host.device.saveState() }
            sections.append(ModelState(type: d.host.typeName, state: state).section)
            if let c = d.paused.connection {
                sections.append(ConnectionSection(instance: d.instance, socket: c.socket, live: c.endpoint.connectionState(),
                                                  into: &list).section)
                // A migration lives as long as its client's connection.
                if let m = d.host.migrationSnapshot { sections.append(MigrationSection(instance: d.instance, snapshot: m).section) }
            }
        }
        sections += list.inventory.map(\.section)
        return Handover(sections: sections).encode()
    }

    // MARK: Replacing the process

    /// Checks the new binary against the handover (step 1). Nil when it
    /// read it; otherwise why not, in words for the log and `umdev upgrade`.
    public static func check(binary: String, arguments: [String], handover: (bytes: [UInt8], fds: [Int32])) -> String? {
        guard access(binary, X_OK) == 0 else { return "\(binary): \(String(cString: strerror(errno)))" }
        let passed: Passed
        switch pass(handover) {
        case .success(let p): passed = p
        case .failure(let why): return why.text
        }
        defer { passed.end() }
        var errPipe: [Int32] = [-1, -1]
        guard pipe(&errPipe) == 0 else { return "pipe: \(String(cString: strerror(errno)))" }
        defer { close(errPipe[0]) }
        _ = umdev_set_cloexec(errPipe[0], 1)
        _ = umdev_set_cloexec(errPipe[1], 1)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        var env = passed.environment + ["\(checkVariable)=1", "NOTIFY_SOCKET="]
        env.removeAll { $0.hasPrefix("NOTIFY_SOCKET=") && $0 != "NOTIFY_SOCKET=" }
        var child: pid_t = 0
        let rc = withCStrings([binary] + arguments.dropFirst()) { argv in
            withCStrings(env) { envp in posix_spawn(&child, binary, &actions, nil, argv, envp) }
        }
        close(errPipe[1])
        // The child has its copies; ours go back to close-on-exec at once.
        passed.end()
        guard rc == 0 else { return "cannot start \(binary): \(String(cString: strerror(rc)))" }
        var output: [UInt8] = []
        let deadline = monotonicNanoseconds() + UInt64(checkSeconds * 1e9)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let now = monotonicNanoseconds()
            if now >= deadline { kill(child, SIGKILL); break }
            var p = pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32((deadline - now) / 1_000_000) + 1)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { continue }
            let n = read(errPipe[0], &buffer, buffer.count)
            if n <= 0 { break }
            if output.count < 64 << 10 { output += buffer[0..<n] }
        }
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        let said = String(decoding: output, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
        let termination = status & 0x7f
        if termination == 0 && (status >> 8) & 0xff == 0 { return nil }
        let how = termination == 0 ? "exited with status \((status >> 8) & 0xff)"
            : "was killed by signal \(termination)\(termination == SIGKILL && monotonicNanoseconds() >= deadline ? " (the check took over \(Int(checkSeconds)) s)" : "")"
        return "\(binary) \(how) while reading the handover" + (said.isEmpty ? "" : ": \(said)")
    }

    /// Execs the new binary with the handover (step 2). Returns only when
    /// exec failed, with why; the caller resumes its devices.
    public static func exec(binary: String, arguments: [String], handover: (bytes: [UInt8], fds: [Int32])) -> String {
        let passed: Passed
        switch pass(handover) {
        case .success(let p): passed = p
        case .failure(let why): return why.text
        }
        defer { passed.end() }
        // What the fd store holds for this process is the new one's to replace.
        let env = passed.environment + (StateKeeper.enabled ? [StoredDescriptors.shared.namesForNextProcess] : [])
        _ = withCStrings([binary] + arguments.dropFirst()) { argv in
            withCStrings(env) { envp in execve(binary, argv, envp) }
        }
        return "exec \(binary): \(String(cString: strerror(errno)))"
    }

    /// The handover made inheritable: a memfd holding the bytes, every
    /// descriptor without close-on-exec, and the environment naming them.
    private final class Passed {
        let memfd: Int32
        let fds: [Int32]
        let environment: [String]
        private var ended = false
        init(memfd: Int32, fds: [Int32], environment: [String]) { self.memfd = memfd; self.fds = fds; self.environment = environment }

        /// Back to close-on-exec, the memfd closed (a started child holds its own copies); once.
        func end() {
            guard !ended else { return }
            ended = true
            for fd in fds { _ = umdev_set_cloexec(fd, 1) }
            close(memfd)
        }
    }

    /// A memfd holding `bytes`, positioned at the start.
    private static func memfdHolding(_ bytes: [UInt8]) -> Result<Int32, Why> {
        let memfd = umdev_memfd("umdev-handover")
        guard memfd >= 0 else { return .failure(Why("memfd_create: \(String(cString: strerror(errno)))")) }
        let written = bytes.withUnsafeBytes { b -> Int in
            var done = 0
            while done < b.count {
                let n = Glibc.write(memfd, b.baseAddress! + done, b.count - done)
                if n < 0 { if errno == EINTR { continue }; return -1 }
                done += n
            }
            return done
        }
        guard written == bytes.count, lseek(memfd, 0, SEEK_SET) == 0 else {
            let e = errno
            close(memfd)
            return .failure(Why("writing the handover: \(String(cString: strerror(e)))"))
        }
        return .success(memfd)
    }

    private static func pass(_ handover: (bytes: [UInt8], fds: [Int32])) -> Result<Passed, Why> {
        let memfd: Int32
        switch memfdHolding(handover.bytes) {
        case .success(let fd): memfd = fd
        case .failure(let why): return .failure(why)
        }
        for fd in handover.fds + [memfd] { _ = umdev_set_cloexec(fd, 0) }
        let env = ServiceManager.environment(removing: [checkVariable], setting: [
            (handoverVariable, "\(memfd)"), (descriptorsVariable, handover.fds.map(String.init).joined(separator: ",")),
        ])
        return .success(Passed(memfd: memfd, fds: handover.fds, environment: env))
    }

    struct Why: Error { var text: String; init(_ t: String) { text = t } }

    // MARK: Reading

    /// A handover this process was started with.
    public struct Incoming {
        public var handover: Handover
        public var pool: DescriptorPool
        /// Only check it (step 1): build and restore, serve nothing, exit 0.
        public var checkOnly: Bool
        public var writer: Writer?
        /// Where each device's sections are: from its device section to the
        /// next device or instance section (read once, so that restoring
        /// many devices does not read every section for each).
        let devices: [String: Range<Int>]

        init(handover: Handover, pool: DescriptorPool, checkOnly: Bool, writer: Writer?) {
            self.handover = handover; self.pool = pool; self.checkOnly = checkOnly; self.writer = writer
            var groups: [String: Range<Int>] = [:]
            var open: (name: String, start: Int)?
            for (i, s) in handover.sections.enumerated() {
                let type = SectionType(rawValue: s.type)
                guard type == .device || type == .instance else { continue }
                if let o = open { groups[o.name] = groups[o.name] ?? (o.start..<i) }
                open = nil
                // Decoded in full later; only the name is needed here (the decoder checked the rest).
                if type == .device, let d = try? DeviceSection(s.payload, descriptorCount: pool.count) { open = (d.instance, i) }
            }
            if let o = open { groups[o.name] = groups[o.name] ?? (o.start..<handover.sections.count) }
            devices = groups
        }

        /// The sections of device `instance`: its device section and those after it.
        func sections(of instance: String) -> ArraySlice<Handover.Section> {
            guard let r = devices[instance] else { return [] }
            return handover.sections[r]
        }
    }

    /// The handover in this process's environment, if any: read, decoded
    /// as hostile input, and the variables removed (nothing this process
    /// starts inherits them). Every descriptor it names is close-on-exec
    /// again from here. Throws with the reason when it is unusable; the
    /// named descriptors are closed then.
    public static func incoming() throws(DeviceError) -> Incoming? {
        guard let memText = getenv(handoverVariable).map({ String(cString: $0) }) else { return nil }
        let listText = getenv(descriptorsVariable).map { String(cString: $0) } ?? ""
        let checkOnly = getenv(checkVariable).map { String(cString: $0) == "1" } ?? false
        unsetenv(handoverVariable); unsetenv(descriptorsVariable); unsetenv(checkVariable)
        var fds: [Int32] = []
        for part in listText.split(separator: ",", omittingEmptySubsequences: true) {
            guard let fd = Int32(part), fd > 2, fcntl(fd, F_GETFD) >= 0, !fds.contains(fd) else {
                for fd in fds { close(fd) }
                throw DeviceError(EBADF, "\(descriptorsVariable) names '\(part)', not a descriptor this process holds")
            }
            _ = umdev_set_cloexec(fd, 1)
            fds.append(fd)
        }
        guard let memfd = Int32(memText), memfd > 2, !fds.contains(memfd), fcntl(memfd, F_GETFD) >= 0 else {
            for fd in fds { close(fd) }
            throw DeviceError(EBADF, "\(handoverVariable) names '\(memText)', not a descriptor this process holds")
        }
        return try readHandover(memfd: memfd, fds: fds, checkOnly: checkOnly)
    }

    /// The handover in `memfd` (closed here) with the descriptors `fds`
    /// (now the pool's: closed if nothing claims them).
    static func readHandover(memfd: Int32, fds: [Int32], checkOnly: Bool) throws(DeviceError) -> Incoming {
        let pool = DescriptorPool(fds)
        defer { close(memfd) }
        var st = stat()
        guard fstat(memfd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= maxHandover else {
            throw DeviceError(EINVAL, "the handover is not a file of at most \(maxHandover >> 20) MiB")
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = bytes.withUnsafeMutableBytes { pread(memfd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count else { throw DeviceError(EIO, "reading the handover: short read") }
        let handover = try Handover.decode(bytes, descriptorCount: fds.count)
        let writer = try handover.sections(.writer).first.map { (s) throws(DeviceError) in try Writer(s.payload) }
        return Incoming(handover: handover, pool: pool, checkOnly: checkOnly, writer: writer)
    }

    /// One device of an incoming handover, rebuilt: `make` builds the
    /// model (memory the handover brought is on offer while it runs); the
    /// model state is restored and the connection, if one was attached,
    /// resumed. `instance` picks the device ("" for `umdev serve`).
    public static func restore(_ incoming: Incoming, instance: String, logger: Logger, stallTimeout: Double = 5,
                               pollMicroseconds: Int = 0,
                               make: () throws(DeviceError) -> (device: VFIODevice, typeName: String)) throws(DeviceError) -> Restored {
        let count = incoming.pool.count
        var device: DeviceSection?
        var model: ModelState?
        var connection: ConnectionSection?
        var display: DisplaySection?
        var hostLines: HostSection?
        var migration: MigrationSection?
        // A device's sections follow its device section.
        var current: String?
        for s in incoming.sections(of: instance) {
            switch SectionType(rawValue: s.type) {
            case .device?:
                let d = try DeviceSection(s.payload, descriptorCount: count)
                current = d.instance
                if d.instance == instance { device = d }
            case .modelState? where current == instance: model = try ModelState(s.payload)
            case .display? where current == instance: display = try DisplaySection(s.payload, descriptorCount: count)
            case .migration?:
                let m = try MigrationSection(s.payload)
                if m.instance == instance { migration = m }
            case .host? where current == instance: hostLines = try HostSection(s.payload, descriptorCount: count)
            case .connection?:
                let c = try ConnectionSection(s.payload, descriptorCount: count)
                if c.instance == instance { connection = c }
            default: break
            }
        }
        guard let device else { throw DeviceError(ENOENT, "the handover has no device '\(instance)'") }
        guard let model else { throw DeviceError(EINVAL, "the handover has no model state for device '\(instance)'") }
        var memory: [Int32] = []
        for i in device.regionMemory {
            do { memory.append(try incoming.pool.take(i, for: "region memory")) } catch {
                for fd in memory { close(fd) }
                throw error
            }
        }
        var resources: [HostResource] = []
        for e in hostLines?.entries ?? [] {
            var fds: [HostResource.Descriptor] = []
            for d in e.descriptors {
                do { fds.append(.init(role: d.role, fd: try incoming.pool.take(d.index, for: "\(e.key) \(d.role)"))) } catch {
                    for fd in memory { close(fd) }
                    for r in resources { r.closeAll() }
                    for f in fds { close(f.fd) }
                    throw error
                }
            }
            resources.append(HostResource(key: e.key, descriptors: fds, data: e.data))
        }
        // On a throw, what a model claimed closed with it, and each offer closed the rest.
        let built = try HostResourceAdoption.offering(resources, owning: !incoming.checkOnly) { () throws(DeviceError) in
            try MemoryAdoption.offering(memory) { () throws(DeviceError) in try make() }
        }
        for fd in built.0.unclaimed { close(fd) }
        if !built.0.unclaimed.isEmpty { logger.warning("\(built.0.unclaimed.count) handed-over memory descriptor(s) matched no region; closed") }
        for r in built.unclaimed { r.closeAll() }
        if !built.unclaimed.isEmpty {
            logger.warning("handed-over host line(s) \(built.unclaimed.map(\.key).joined(separator: ", ")) matched no backend; closed")
        }
        let made = built.0.0
        guard made.typeName == model.type else {
            throw DeviceError(EINVAL, "the handover holds a \(model.type), this process serves a \(made.typeName)")
        }
        let host = DeviceHost(device: made.device, typeName: made.typeName)
        guard model.state.count >= 6 else { throw DeviceError(EINVAL, "\(model.type) state is truncated") }
        let version = Int(model.state[4]) | Int(model.state[5]) << 8
        guard made.device.readableStateVersions.contains(version) else {
            throw DeviceError(EINVAL, "\(model.type) state version \(version); this umdev reads \(made.device.readableStateVersions)")
        }
        if let d = made.device as? DisplayDevice {
            // Before the state: restoring it publishes the plane, which then finds its old id.
            if let display { try adoptPlanes(display, into: d) }
        } else if display != nil {
            throw DeviceError(EINVAL, "the handover gives the \(model.type) a display, which it does not have")
        }
        try made.device.restoreState(model.state, version: version)
        if let migration {
            guard connection != nil else { throw DeviceError(EINVAL, "the handover has a migration for '\(instance)' but no client to drive it") }
            try host.adoptMigration(migration.snapshot)
        }
        // The descriptors taken from here on are closed if a later step fails.
        var taken: [Int32] = []
        var done = false
        defer { if !done { for fd in taken { close(fd) } } }
        func take(_ index: UInt32, for what: String) throws(DeviceError) -> Int32 {
            let fd = try incoming.pool.take(index, for: what)
            taken.append(fd)
            return fd
        }
        let listener = try device.listener.map { (i) throws(DeviceError) in try take(i, for: "the listener") }
        if let listener, let path = device.socketPath, !InheritedSocket.listens(listener, at: path) {
            let bound = InheritedSocket.boundPath(FileDescriptor(rawValue: listener)) ?? ""
            throw DeviceError(EINVAL, "the handover puts device '\(instance)' at \(path), but its listener is bound to \(bound.isEmpty ? "no path" : bound)")
        }
        var displaySocket: DisplaySocket?
        if let display, let index = display.listener {
            let fd = try take(index, for: "the display socket")
            guard InheritedSocket.listens(fd, at: display.socketPath.isEmpty ? nil : display.socketPath) else {
                throw DeviceError(EINVAL, "the handover's display socket for '\(instance)' is not a socket listening at \(display.socketPath)")
            }
            displaySocket = DisplaySocket(listener: fd, path: display.socketPath, ownsSocketFile: display.ownsSocketFile && !display.socketPath.isEmpty)
        }
        var client: SocketEndpoint?
        if let connection {
            let socket = try take(connection.socket, for: "the client connection")
            let state = try connection.resolved(from: incoming.pool)
            let framer: MessageFramer
            do { framer = try MessageFramer(resuming: state.framer) } catch {
                for w in state.windows where w.fd >= 0 { close(w.fd) }
                for v in state.vectors { for fd in [v.trigger, v.unmask, v.mask] where fd >= 0 { close(fd) } }
                throw DeviceError(EINVAL, "the handed-over connection's buffered bytes do not fit a framer")
            }
            let endpoint = SocketEndpoint(host: host, socket: socket, framer: framer, logger: logger,
                                          stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
            try endpoint.resume(state)
            client = endpoint
        }
        done = true
        var owned: OwnedDescriptor? = listener.map { OwnedDescriptor(adopting: FileDescriptor(rawValue: $0)) }
        let server = DeviceServer(host: host, handedOverListener: owned.take(), path: device.socketPath, ownsSocketFile: device.ownsSocketFile,
                                  client: client, logger: logger, stallTimeout: stallTimeout, pollMicroseconds: pollMicroseconds)
        return Restored(server: server, display: displaySocket)
    }

    /// A device rebuilt from a handover, and its display socket if it had one
    /// (the caller's to serve viewers on, or to close).
    public struct Restored {
        public var server: DeviceServer
        public var display: DisplaySocket?
    }

    /// The previous process's plane ids, checked against the device.
    private static func adoptPlanes(_ s: DisplaySection, into device: DisplayDevice) throws(DeviceError) {
        let regions = device.regions
        for p in s.recent {
            guard p.kind == device.planeKind, p.region >= 0, p.region < regions.count, regions[p.region].mapping != nil,
                  p.offset + p.size <= regions[p.region].size else {
                throw DeviceError(EINVAL, "the handover's plane \(p) is not one this \(device.planeKind) device could show")
            }
        }
        guard device.adoptNextPlaneID(s.nextPlaneID) else {
            throw DeviceError(EINVAL, "the handover's next plane id \(s.nextPlaneID) does not fit this device")
        }
        device.planes.seedRecent(s.recent)
    }

    // MARK: The service manager's fd store (a planned restart)

    /// The fd store's name for the handover's memfd, and for descriptor `i` of its list.
    static let storedHandoverName = "umdev-handover"
    static let storedPrefix = "umdev-fd-"
    static func storedName(_ i: Int) -> String { storedPrefix + "\(i)" }

    /// Hands a handover to the service manager's fd store (`FDSTORE=1`),
    /// for the process the manager starts next: every descriptor under its
    /// index's name, then the memfd with the bytes. Nil when all is stored;
    /// otherwise why, and what was stored is removed again.
    public static func store(_ handover: (bytes: [UInt8], fds: [Int32])) -> String? {
        guard ServiceManager.notifies else { return "no service manager listens ($NOTIFY_SOCKET)" }
        let memfd: Int32
        switch memfdHolding(handover.bytes) {
        case .success(let fd): memfd = fd
        case .failure(let why): return why.text
        }
        defer { close(memfd) }
        for (i, fd) in handover.fds.enumerated() where !ServiceManager.store(fd, name: storedName(i)) {
            forgetStored(count: i + 1)
            return "the service manager did not take descriptor \(i) of \(handover.fds.count)"
        }
        guard ServiceManager.store(memfd, name: storedHandoverName) else {
            forgetStored(count: handover.fds.count)
            return "the service manager did not take the handover"
        }
        return nil
    }

    /// A handover the service manager kept for this process (`store` in
    /// the previous one), taken out of `passed` (what `$LISTEN_FDS`
    /// brought; socket activation's descriptors stay). Nil when there is
    /// none. Throws when it is unusable; its descriptors are closed then.
    /// What the store held is forgotten then too, so a next start does not trip on it again.
    public static func incoming(fromStore passed: inout [ServiceManager.ListenedFD]) throws(DeviceError) -> Incoming? {
        let names = Set(passed.map(\.name).filter { $0.hasPrefix(storedPrefix) || $0 == storedHandoverName })
        do { return try takeStored(&passed) } catch {
            for name in names { ServiceManager.removeStored(name: name) }
            throw error
        }
    }

    private static func takeStored(_ passed: inout [ServiceManager.ListenedFD]) throws(DeviceError) -> Incoming? {
        guard let at = passed.firstIndex(where: { $0.name == storedHandoverName }) else { return nil }
        let memfd = passed.remove(at: at).fd
        var byIndex: [Int: Int32] = [:]
        var extra: [Int32] = []
        passed.removeAll { p in
            guard p.name.hasPrefix(storedPrefix) else { return false }
            if let i = Int(p.name.dropFirst(storedPrefix.count)), i >= 0, i < 1 << 16, byIndex[i] == nil { byIndex[i] = p.fd } else { extra.append(p.fd) }
            return true
        }
        for fd in extra { close(fd) }
        let fds = (0..<byIndex.count).compactMap { byIndex[$0] }
        guard fds.count == byIndex.count else {
            for fd in byIndex.values { close(fd) }
            close(memfd)
            throw DeviceError(EINVAL, "the fd store holds \(byIndex.count) handover descriptors, but not numbered 0 to \(byIndex.count - 1)")
        }
        return try readHandover(memfd: memfd, fds: fds, checkOnly: false)
    }

    /// Tells the service manager to drop a stored handover of `count`
    /// descriptors (once this process holds them, or when storing failed).
    public static func forgetStored(count: Int) {
        for i in 0..<count { ServiceManager.removeStored(name: storedName(i)) }
        ServiceManager.removeStored(name: storedHandoverName)
    }

    // MARK: The trigger

    /// Blocks SIGUSR2 in the calling thread and every thread it starts from
    /// here: call first thing, before any thread exists, so that only the
    /// trigger's thread ever takes it.
    public static func blockTrigger() {
        _ = umdev_block_only_signal(SIGUSR2)
    }

    /// Starts the thread that waits for SIGUSR2 and runs `upgrade` for each
    /// (one at a time; signals arriving meanwhile count once).
    public static func startTrigger(logger: Logger, _ upgrade: @escaping @Sendable (_ sender: pid_t) -> Void) {
        _ = Threads.start(detached: true) {
            while true {
                let sender = umdev_wait_signal(SIGUSR2)
                if sender < 0 { logger.error("waiting for SIGUSR2: \(String(cString: strerror(errno)))"); return }
                upgrade(sender)
            }
        }
    }
}

extension LiveUpgrade.DisplaySocket {
    /// A serving display server's socket, for a handover (nil once it stopped).
    public init?(_ server: DisplayServer) {
        guard server.listener >= 0 else { return nil }
        self.init(listener: server.listener, path: server.path, ownsSocketFile: server.ownsSocketFile)
    }

    /// A display server for viewers on this handed-over socket, not yet started.
    public func server(description: DeviceDescription, logger: Logger) -> DisplayServer {
        DisplayServer(description: description, handedOverListener: listener, path: path, ownsSocketFile: ownsSocketFile, logger: logger)
    }
}

/// Runs `body` with `strings` as a NULL-terminated C array.
private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let c = strings.map { strdup($0) } + [nil]
    defer { for p in c { free(p) } }
    return c.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// Nanoseconds as milliseconds with two decimals, for the log.
public func milliseconds(_ ns: UInt64) -> String {
    let hundredths = (ns + 5_000) / 10_000
    return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)"
}
