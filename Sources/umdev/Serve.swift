import ArgumentParser
import CShim
import CommandSupport
import Descriptors
import Glibc
import Handover
import Lifecycle
import Locking
import Logging
import MTTY
import PCI
import ServiceManager
import SystemPackage
import UnixSocket
import VFIOUserServer

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve one device on a vfio-user socket.",
        discussion: """
        Types: \(Catalog.all.map(\.id).joined(separator: ", ")) (see `umdev types`).
        mtty-1 and mtty-2 are the Linux mtty sample; "test" and "test-nommap" are
        protocol test devices for exercising the server, not sample devices.
        One client at a time is served; when it disconnects the device keeps
        its state and the next client may connect. A display type (mdpy-*,
        mbochs-*) also listens on a display socket, SOCKET.display unless
        --display-socket says otherwise: any number of viewers (umdev view) attach
        there while a VMM holds the device socket. Stop with SIGINT or SIGTERM.
        SIGUSR2 upgrades in place: the binary now at the path umdev was started
        from takes over the device and its client without the client noticing
        (every type, an mtty's pty and socket lines with their peers; viewers
        reconnect to the same display socket; see README, "Live upgrade").
        For many devices, budgets, UUIDs and definitions, run `umdev daemon`.
        """)

    @Option(name: .long, help: "Device type to serve.")
    var type: String = "mtty-2"

    @Option(name: [.customLong("socket-path"), .customLong("socket")], help: ArgumentHelp(
        "UNIX socket path to listen on (--socket is the same).", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("fd"), help: ArgumentHelp(
        "Serve on this inherited descriptor: a UNIX stream socket, listening or already connected to the client.",
        valueName: "fdnum"))
    var inheritedFD: Int32?

    @Flag(name: .long, help: "Print the backend's capabilities as JSON (Protocol/BACKEND.md) and exit.")
    var printCapabilities = false

    @Option(name: .long, help: ArgumentHelp(
        "Serial backend of the next mtty port: loopback (as the sample), pty, or unix:PATH. Repeat per port.",
        valueName: "backend"))
    var serial: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "Display socket for viewers (display types only); default SOCKET.display.", valueName: "path"))
    var displaySocket: String?

    @OptionGroup var restart: RestartOptions

    @Flag(name: .long, help: "Do not open a display socket.")
    var noDisplaySocket = false

    @Option(name: .customLong("poll-us"), help: ArgumentHelp(
        "Spin on the connection for up to N µs for the next request before blocking: lower latency for a busy core (default 0, off).",
        valueName: "N"))
    var pollMicroseconds: Int = 0

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if inheritedFD != nil && socket != nil { throw ValidationError("--fd and --socket-path conflict: give one") }
    }

    func run() throws {
        let started = monotonicNanoseconds()
        restart.superviseIfAsked(logging)
        // Before any thread exists: only the upgrade trigger's thread takes SIGUSR2.
        LiveUpgrade.blockTrigger()
        logging.bootstrap()
        let logger = Logger(label: "umdev")
        guard let kind = Catalog.type(type) else {
            throw ValidationError("unknown device type '\(type)'; known: \(Catalog.all.map(\.id).joined(separator: ", "))")
        }
        if restart.usesFDStore {
            // SIGTERM goes to the thread that hands everything to the fd store.
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGTERM)
            pthread_sigmask(SIG_BLOCK, &set, nil)
        }
        let start = try StartingHandover(logger: logger, keeping: restart.keepsState)
        // What the store held and cannot be restored: start as if it were empty (its listener went with it).
        if start.incoming != nil, try takeOver(start, kind: kind, logger: logger, started: started) { return }
        start.finishStore()
        if printCapabilities {
            // The conventions: print, exit 0, ignore every other option.
            guard let d = BackendDescription(type: kind, binary: CommandLine.arguments[0]) else {
                throw CommandFailure("cannot build a \(kind.id) to describe it")
            }
            print(BackendDescription.json(d.capabilities), terminator: "")
            return
        }
        let endpoint = try chooseSocket(start.passed)
        guard serial.isEmpty || kind.pool == .mtty else { throw ValidationError("--serial applies to mtty types only") }
        guard serial.count <= kind.cost else { throw ValidationError("\(kind.id) has \(kind.cost) port(s); \(serial.count) --serial given") }
        for s in serial where SerialBackend(argument: s) == nil {
            throw ValidationError("bad --serial '\(s)': use loopback, pty or unix:PATH")
        }
        let device = try makeDevice(kind)
        if let mtty = device as? MTTY {
            for (port, name) in mtty.backendNames.enumerated() {
                logger.notice("port \(port): \(name ?? "loopback (what the guest sends comes back)")")
            }
        }
        guard displaySocket == nil || !noDisplaySocket else { throw ValidationError("--display-socket and --no-display-socket conflict") }
        guard displaySocket == nil || device is DisplayDevice else { throw ValidationError("\(kind.id) has no display; --display-socket applies to display types") }
        let host = DeviceHost(device: device, typeName: kind.id)
        guard (0...1_000_000).contains(pollMicroseconds) else { throw ValidationError("--poll-us is 0 to 1000000") }
        let server: DeviceServer
        var paths: [String] = []
        switch endpoint {
        case .path(let path):
            server = try DeviceServer(host: host, path: path, logger: logger, pollMicroseconds: pollMicroseconds)
            paths.append(path)
        case .inherited(.listening(let fd)):
            server = DeviceServer(host: host, inheritedListener: OwnedDescriptor(adopting: fd), logger: logger, pollMicroseconds: pollMicroseconds)
        case .inherited(.connected):
            server = DeviceServer(host: host, logger: logger, pollMicroseconds: pollMicroseconds)
        }
        // Where the device's socket is on the filesystem, if anywhere.
        let socketPath = server.path.isEmpty ? nil : server.path
        signal(SIGPIPE, SIG_IGN)
        var viewers: DisplayServer?
        if let display = device as? DisplayDevice {
            PlaneLog(display.planes, logger: logger).start()
            if !noDisplaySocket, let path = displaySocket ?? socketPath.map({ $0 + ".display" }) {
                let v = try DisplayServer(description: host.description, path: path, logger: logger)
                v.start()
                viewers = v
                paths.append(path)
                logger.notice("display socket for viewers on \(path)")
            }
        }
        installTerminationHandler(paths: paths)
        if StateKeeper.enabled {
            keeper = StateKeeper.keep(server, name: "serve", instance: "", display: viewers.flatMap(LiveUpgrade.DisplaySocket.init), logger: logger)
        }
        let ownsSocketFile = socketPath != nil && { if case .path = endpoint { return true } else { return false } }()
        startUpgradeTrigger(server: server, display: viewers, ownsSocketFile: ownsSocketFile, logger: logger)
        if restart.usesFDStore { startStoreOnTerm(server: server, display: viewers, ownsSocketFile: ownsSocketFile, paths: paths, logger: logger) }
        let place: String
        switch endpoint {
        case .path(let path): place = path
        case .inherited(.listening(let fd)): place = "inherited descriptor \(fd.rawValue)" + (socketPath.map { " (\($0))" } ?? "")
        case .inherited(.connected(let fd)): place = "inherited descriptor \(fd.rawValue), connected to its client"
        }
        logger.notice("serving \(kind.id) on \(place)")
        // Once listening: the exact option that attaches it, for a person or a script.
        if let socketPath { print(qemuOption(socketPath)); fflush(nil) }
        ServiceManager.notify("READY=1\nSTATUS=serving \(kind.id) on \(place)")
        if case .inherited(.connected(let fd)) = endpoint {
            server.serve(connection: OwnedDescriptor(adopting: fd))
            logger.notice("the client left; a connected socket serves no one else")
            server.stop()
            return
        }
        server.serve()
    }

    /// Where a device is served: a path to listen on, or a socket handed in.
    enum Endpoint { case path(String), inherited(InheritedSocket) }

    /// `--socket-path`, `--fd`, or the one socket that socket activation
    /// passed (`LISTEN_FDS`), checked before anything is served.
    func chooseSocket(_ activated: [ServiceManager.ListenedFD]) throws -> Endpoint {
        if let inheritedFD {
            for passed in activated where passed.fd != inheritedFD { close(passed.fd) }
            do { return .inherited(try InheritedSocket.check(inheritedFD)) } catch { throw CommandFailure("--fd \(inheritedFD): \(error)") }
        }
        if let socket {
            for passed in activated { close(passed.fd) }
            return .path(socket)
        }
        guard !activated.isEmpty else {
            throw CommandFailure("give the socket: --socket-path PATH or --fd FDNUM (or start umdev serve by socket activation)")
        }
        guard activated.count == 1 else {
            throw CommandFailure("socket activation passed \(activated.count) descriptors (\(activated.map(\.name).joined(separator: ", "))); umdev serve takes one")
        }
        do { return .inherited(try InheritedSocket.check(activated[0].fd)) } catch {
            throw CommandFailure("the socket passed by socket activation: \(error)")
        }
    }
}

// MARK: Live upgrade

extension Serve {
    /// Builds the device from what factory `kind` makes, with `--serial`'s backends.
    func makeDevice(_ kind: DeviceType) throws(DeviceError) -> VFIODevice {
        try kind.make(Attributes(serial.enumerated().map { ("port\($0.offset)", $0.element) }))
    }

    /// The rest of a live upgrade, in the new process: the device and its
    /// client from the handover, then serving as before. With the check
    /// flag set, only reads and rebuilds (the old process asks first), and
    /// exits 0; any failure is the last line on stderr and exit status 1.
    /// A handover from the service manager's fd store that cannot be
    /// restored is logged and false returned (the caller starts afresh)
    /// instead of thrown. What socket activation passed beside it is closed
    /// once the handover's own listener serves.
    func takeOver(_ start: StartingHandover, kind: DeviceType, logger: Logger, started: UInt64) throws -> Bool {
        guard let incoming = start.incoming else { return false }
        let fromStore = start.fromStore
        let restored: LiveUpgrade.Restored
        do {
            restored = try LiveUpgrade.restore(incoming, instance: "", logger: logger, pollMicroseconds: pollMicroseconds) { () throws(DeviceError) in
                (try makeDevice(kind), kind.id)
            }
        } catch {
            if incoming.checkOnly {
                FileHandleOutput.standardError("cannot take over: \(error.message)")
                Glibc.exit(1)
            }
            if fromStore {
                logger.error("cannot take the device back from the fd store, starting afresh: \(error.message)")
                incoming.pool.closeUnclaimed()
                return false
            }
            throw CommandFailure("cannot take over from the previous umdev: \(error.message)")
        }
        if incoming.checkOnly { Glibc.exit(0) }
        if start.kept == nil { start.finishStore() }
        for p in start.passed { close(p.fd) }
        let server = restored.server
        if let mtty = server.host.device as? MTTY {
            for (port, name) in mtty.backendNames.enumerated() {
                logger.notice("port \(port): \(name ?? "loopback (what the guest sends comes back)")")
            }
        }
        signal(SIGPIPE, SIG_IGN)
        // A socket file the previous process made is this one's to remove; one it was given is not.
        var paths = server.ownsSocketFile ? [server.path] : []
        var viewers: DisplayServer?
        if let display = server.host.device as? DisplayDevice {
            PlaneLog(display.planes, logger: logger).start()
            if let d = restored.display {
                let v = d.server(description: server.host.description, logger: logger)
                v.start()
                viewers = v
                if v.ownsSocketFile { paths.append(v.path) }
            }
        } else if let d = restored.display {
            close(d.listener)
        }
        installTerminationHandler(paths: paths)
        if StateKeeper.enabled {
            let display = viewers.flatMap(LiveUpgrade.DisplaySocket.init)
            keeper = StateKeeper.keep(server, name: "serve", instance: "", display: display, logger: logger)
        }
        start.finishStore()
        startUpgradeTrigger(server: server, display: viewers, ownsSocketFile: server.ownsSocketFile, logger: logger)
        if restart.usesFDStore { startStoreOnTerm(server: server, display: viewers, ownsSocketFile: server.ownsSocketFile, paths: paths, logger: logger) }
        var timing = start.timing(started: started, now: monotonicNanoseconds())
        timing["client"] = "\(server.isAttached ? "attached" : "none")"
        logger.notice("took over \(kind.id) from \(start.from); now umdev \(LiveUpgrade.umdevVersion)", metadata: timing)
        ServiceManager.notify("READY=1\nSTATUS=serving \(kind.id) (\(fromStore ? "restarted" : "upgraded") from \(start.from))")
        server.serve()
        if server.path.isEmpty {
            logger.notice("the client left; a connected socket serves no one else")
            server.stop()
        }
        return true
    }

    /// The device paused and written into a handover, or nil (and the
    /// device serving again) with why logged.
    static func handover(server: DeviceServer, display: DisplayServer?, ownsSocketFile: Bool, logger: Logger, refusal: String)
        -> (bytes: [UInt8], fds: [Int32])? {
        guard let paused = server.pause() else {
            logger.error("\(refusal): the device did not stop between requests within 5 s")
            return nil
        }
        do {
            return try LiveUpgrade.write([.init(instance: "", host: server.host, paused: paused, ownsSocketFile: ownsSocketFile,
                                           socketPath: server.path, display: display.flatMap(LiveUpgrade.DisplaySocket.init))])
        } catch {
            server.resume()
            logger.error("\(refusal): \(error.message)")
            return nil
        }
    }

    /// SIGTERM under a service manager that keeps descriptors: the device
    /// and its client go into the fd store for the next start, and this
    /// process exits leaving the socket files; if the store cannot take
    /// them, it stops as SIGTERM always did.
    func startStoreOnTerm(server: DeviceServer, display: DisplayServer?, ownsSocketFile: Bool, paths: [String], logger: Logger) {
        _ = Threads.start(detached: true) {
            _ = umdev_wait_signal(SIGTERM)
            let began = monotonicNanoseconds()
            ServiceManager.notify("STOPPING=1\nSTATUS=handing the device to the fd store")
            if StateKeeper.enabled {
                // Everything is in the store already: the request under way finishes, its state is saved, and the process exits.
                if let paused = server.pause() {
                    server.saveState(paused)
                    logger.notice("the device's state is in the service manager's fd store for the next start",
                                  metadata: ["store_ms": "\(milliseconds(monotonicNanoseconds() - began))",
                                             "descriptors": "\(StoredDescriptors.shared.count)"])
                    Glibc.exit(0)
                }
                logger.error("the device did not stop between requests within 5 s; exiting with its state as last saved")
                Glibc.exit(0)
            }
            if let h = Self.handover(server: server, display: display, ownsSocketFile: ownsSocketFile, logger: logger,
                                refusal: "cannot hand the device to the fd store, stopping") {
                if let why = LiveUpgrade.store(h) {
                    logger.error("cannot hand the device to the fd store, stopping: \(why)")
                } else {
                    logger.notice("handed the device to the service manager's fd store for the next start",
                                  metadata: ["store_ms": "\(milliseconds(monotonicNanoseconds() - began))",
                                             "descriptors": "\(h.fds.count)", "bytes": "\(h.bytes.count)"])
                    Glibc.exit(0)
                }
            }
            for p in paths { unlink(p) }
            Glibc._exit(0)
        }
    }

    /// SIGUSR2: check the binary at the path umdev was started from against
    /// a handover, then hand over to it. Any failure leaves this process
    /// serving as before, and says why.
    func startUpgradeTrigger(server: DeviceServer, display: DisplayServer?, ownsSocketFile: Bool, logger: Logger) {
        let binary = Self.startedFrom
        let arguments = CommandLine.arguments
        LiveUpgrade.startTrigger(logger: logger) { sender in
            logger.notice("upgrade requested\(sender > 0 ? " by pid \(sender)" : ""): handing over to \(binary)")
            func handover() -> (bytes: [UInt8], fds: [Int32])? {
                Self.handover(server: server, display: display, ownsSocketFile: ownsSocketFile, logger: logger,
                              refusal: "upgrade refused, still serving")
            }
            // First the check, with the device serving again meanwhile.
            guard let trial = handover() else { return }
            server.resume()
            let checkStart = monotonicNanoseconds()
            if let why = LiveUpgrade.check(binary: binary, arguments: arguments, handover: trial) {
                return logger.error("upgrade failed, still serving: \(why)")
            }
            let pauseStart = monotonicNanoseconds()
            logger.info("the new binary read the handover; switching", metadata: ["check_ms": "\(milliseconds(pauseStart - checkStart))"])
            guard let final = handover() else { return }
            logger.info("handover written", metadata: ["pause_ms": "\(milliseconds(monotonicNanoseconds() - pauseStart))",
                                                       "bytes": "\(final.bytes.count)", "descriptors": "\(final.fds.count)"])
            ServiceManager.notify("RELOADING=1\nMONOTONIC_USEC=\(monotonicNanoseconds() / 1000)\nSTATUS=upgrading")
            let why = LiveUpgrade.exec(binary: binary, arguments: arguments, handover: final)
            server.resume()
            logger.error("upgrade failed, still serving: \(why)")
            ServiceManager.notify("READY=1\nSTATUS=upgrade failed: \(why)")
        }
    }

    /// The path umdev was started from, absolute: what an upgrade execs
    /// (whatever binary is there by then).
    static let startedFrom: String = {
        let arg0 = CommandLine.arguments.first ?? "umdev"
        if arg0.hasPrefix("/") { return arg0 }
        if arg0.contains("/") {
            var cwd = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            guard getcwd(&cwd, cwd.count) != nil else { return arg0 }
            return cwd.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } + "/" + arg0
        }
        for dir in (getenv("PATH").map { String(cString: $0) } ?? "").split(separator: ":") {
            let candidate = "\(dir)/\(arg0)"
            if access(candidate, X_OK) == 0 { return candidate.hasPrefix("/") ? candidate : arg0 }
        }
        return arg0
    }()
}

enum FileHandleOutput {
    /// One line on stderr, unbuffered (the process exits right after).
    static func standardError(_ line: String) {
        let text = line + "\n"
        _ = text.withCString { write(2, $0, strlen($0)) }
    }
}

/// The device's state keeper (`--fd-store`, `--supervise`): alive as long as the process.
private nonisolated(unsafe) var keeper: StateKeeper?

/// Removes the socket files and exits on SIGINT/SIGTERM.
private nonisolated(unsafe) var socketPathsForSignal: (UnsafeMutablePointer<CChar>?, UnsafeMutablePointer<CChar>?)

func installTerminationHandler(paths: [String]) {
    socketPathsForSignal = (paths.first.map { strdup($0) }, paths.dropFirst().first.map { strdup($0) })
    let handler: @convention(c) (Int32) -> Void = { _ in
        if let p = socketPathsForSignal.0 { unlink(p) }
        if let p = socketPathsForSignal.1 { unlink(p) }
        _exit(0)
    }
    signal(SIGINT, handler)
    signal(SIGTERM, handler)
}
