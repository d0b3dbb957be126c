import ArgumentParser
import CommandSupport
import Glibc
import Handover
import Lifecycle
import Logging
import PCI
import ServiceManager
import SystemPackage
import UnixSocket

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Serve many device instances, managed over a control socket.",
        discussion: """
        The daemon serves every device instance on a socket of its own, RUN-DIR/UUID.sock
        (display types also RUN-DIR/UUID.display), and answers `umdev start`, `stop`,
        `list`, `define` and the other lifecycle commands on RUN-DIR/control.sock
        (Protocol/CONTROL.md). Definitions, one JSON file per UUID in mdevctl's format,
        live in CONFIG-DIR; those marked auto start with the daemon. Both directories are
        created owner-only (0700), the sockets 0600.

        Budgets are committed when an instance is created and returned when it stops, as
        the kernel samples account them: mtty 24 ports (mtty-1 takes 1, mtty-2 2), mdpy 4
        instances, mbochs 256 MiB of video memory. Change them with --budget POOL=N.

        SIGINT or SIGTERM stops every instance and exits; definitions stay. With
        --fd-store under a service manager that keeps descriptors, SIGTERM hands every
        instance, client attached, to its fd store instead, and the next start takes
        them back (README, "A restart through the service manager's fd store"). SIGUSR2 (or
        `umdev upgrade`) upgrades in place: the binary now at the path the daemon was
        started from takes over the control socket and every instance, its clients
        attached (see README, "Live upgrade").
        """)

    @Option(name: .customLong("run-dir"), help: ArgumentHelp(
        "Directory for the sockets (default $XDG_RUNTIME_DIR/umdev, or /run/umdev for root).", valueName: "dir"))
    var runDirectory: String?

    @Option(name: .customLong("config-dir"), help: ArgumentHelp(
        "Directory for definitions (default $XDG_CONFIG_HOME/umdev, or /etc/umdev for root).", valueName: "dir"))
    var configDirectory: String?

    @Option(name: .long, help: ArgumentHelp(
        "A budget: mtty=PORTS, mdpy=INSTANCES, mbochs=MIB or test=INSTANCES. Repeatable.", valueName: "pool=n"))
    var budget: [String] = []

    @Option(name: .long, help: ArgumentHelp("Seconds `stop` waits for a client asked to release a device.", valueName: "seconds"))
    var stopTimeout: Double = 10

    @OptionGroup var restart: RestartOptions

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        _ = try budgets()
        guard stopTimeout >= 0, stopTimeout <= 3600 else { throw ValidationError("--stop-timeout is 0 to 3600 seconds") }
    }

    func budgets() throws -> [Pool: Int] {
        var out: [Pool: Int] = [:]
        for b in budget {
            let parts = b.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let pool = Pool(rawValue: String(parts[0])), let n = Int(parts[1]), n >= 0, n <= 1 << 20 else {
                throw ValidationError("bad --budget '\(b)': use mtty=N, mdpy=N, mbochs=N or test=N")
            }
            out[pool] = n
        }
        return out
    }

    /// The control socket socket activation passed (`umdev.socket`): the
    /// one named "control", or the only one.
    func activatedControlSocket(_ passed: [ServiceManager.ListenedFD]) throws -> FileDescriptor? {
        guard !passed.isEmpty else { return nil }
        guard let chosen = passed.count == 1 ? passed[0] : passed.first(where: { $0.name == "control" }) else {
            throw CommandFailure("socket activation passed \(passed.count) descriptors (\(passed.map(\.name).joined(separator: ", "))) and none is named \"control\"")
        }
        for other in passed where other.fd != chosen.fd { close(other.fd) }
        do {
            guard case .listening(let fd) = try InheritedSocket.check(chosen.fd) else {
                throw CommandFailure("the control socket passed by socket activation is connected, not listening (the unit needs Accept=no)")
            }
            return fd
        } catch let e as SocketError {
            throw CommandFailure("the control socket passed by socket activation: \(e)")
        }
    }

    func run() throws {
        let started = monotonicNanoseconds()
        restart.superviseIfAsked(logging)
        // Before any thread exists: only the upgrade trigger's thread takes SIGUSR2.
        LiveUpgrade.blockTrigger()
        logging.bootstrap()
        let logger = Logger(label: "umdev")
        var start = try StartingHandover(logger: logger, keeping: restart.keepsState)
        var config = DaemonConfiguration(runDirectory: runDirectory ?? DaemonConfiguration.defaultRunDirectory,
                                         configDirectory: configDirectory ?? DaemonConfiguration.defaultConfigDirectory)
        config.budgets = try budgets()
        config.stopTimeout = stopTimeout
        config.binary = Serve.startedFrom
        // After a live upgrade or from the fd store the control socket comes with the handover.
        if start.incoming == nil {
            config.inheritedControlSocket = try activatedControlSocket(start.passed)
        } else {
            for p in start.passed { close(p.fd) }
        }
        // Every thread the daemon starts inherits this mask, so SIGINT and
        // SIGTERM arrive here, in sigwait, and nowhere else.
        signal(SIGPIPE, SIG_IGN)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var made: Daemon
        do { made = try Daemon(config, logger: logger, takingOver: start.incoming, kept: start.kept) } catch {
            if start.incoming?.checkOnly == true {
                FileHandleOutput.standardError("cannot take over: \(error.message)")
                Glibc.exit(1)
            }
            guard start.fromStore, let stored = start.incoming else {
                throw CommandFailure(start.incoming == nil ? error.message : "cannot take over from the previous umdev: \(error.message)")
            }
            // What the store held cannot be restored: start as if it were empty.
            logger.error("cannot take the instances back from the fd store, starting without them: \(error.message)")
            stored.pool.closeUnclaimed()
            start.finishStore()
            start = StartingHandover()
            made = try Daemon(config, logger: logger)
        }
        let daemon = made
        start.finishStore()
        if start.incoming?.checkOnly == true { Glibc.exit(0) }
        if let leftover = start.incoming?.pool.closeUnclaimed(), leftover > 0 {
            logger.warning("\(leftover) handed-over descriptor(s) nothing claimed; closed")
        }
        daemon.start()
        LiveUpgrade.startTrigger(logger: logger) { _ in _ = daemon.upgrade(binary: nil, requester: nil) }
        if let incoming = start.incoming {
            var timing = start.timing(started: started, now: monotonicNanoseconds())
            timing["instances"] = "\(daemon.instanceCount)"
            logger.notice("took over \(daemon.instanceCount) instance(s) from \(start.from); now umdev \(LiveUpgrade.umdevVersion)", metadata: timing)
            daemon.answerUpgrade(from: incoming.writer)
        }
        let control = config.inheritedControlSocket.map { "inherited descriptor \($0.rawValue)" + (InheritedSocket.boundPath($0).map { " (\($0))" } ?? "") }
            ?? config.controlSocket
        logger.notice("control socket \(control)")
        ServiceManager.notify("READY=1\nSTATUS=control socket \(control); \(daemon.instanceCount) instance(s) running")
        var received: Int32 = 0
        sigwait(&set, &received)
        if received == SIGTERM, restart.usesFDStore {
            // A restart keeps every device: the manager holds them until the next start.
            ServiceManager.notify("STOPPING=1\nSTATUS=handing every instance to the fd store")
            if StateKeeper.enabled {
                if let why = daemon.saveForRestart() {
                    logger.error("cannot save every instance for the next start (\(why)); exiting with their state as last saved")
                }
                Glibc.exit(0)
            }
            if let why = daemon.handOverToStore() {
                logger.error("cannot hand the instances to the fd store, stopping them: \(why)")
            } else {
                Glibc.exit(0)
            }
        }
        logger.notice("signal \(received): stopping")
        daemon.shutdown()
    }
}
