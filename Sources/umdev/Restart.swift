import ArgumentParser
import CommandSupport
import Handover
import Logging
import ServiceManager

/// `--supervise` and `--fd-store`, the same for `umdev serve` and `umdev daemon`.
struct RestartOptions: ParsableArguments {
    @Flag(name: .long, help: ArgumentHelp(
        "Run under a small parent that plays the service manager where there is none: it holds the fd store, restarts the child keeping every device on SIGHUP, passes SIGUSR2 on, stops it on SIGTERM or SIGINT, and starts it again if it dies."))
    var supervise = false

    @Flag(name: .customLong("fd-store"), help: ArgumentHelp(
        "The service manager keeps descriptors for this service (FileDescriptorStoreMax= above 0): SIGTERM hands every device, clients attached, to its fd store and the next start takes them back. systemd 254 and later say so themselves ($FDSTORE)."))
    var fdStore = false

    /// Whether SIGTERM hands everything to the fd store.
    var usesFDStore: Bool { fdStore || ServiceManager.fdStoreSize != nil }

    /// Whether every device keeps its state in the fd store as it runs, so
    /// that a crash costs none (a manager listens to store it).
    var keepsState: Bool { usesFDStore && ServiceManager.notifies }

    /// With `--supervise`, this process becomes the supervisor and never returns.
    func superviseIfAsked(_ logging: LoggingOptions) {
        guard supervise else { return }
        logging.bootstrap()
        Supervisor.run(arguments: CommandLine.arguments, logger: Logger(label: "umdev-supervise"))
    }
}

/// The handover this process starts with, if any: a live upgrade's (exec),
/// else what a previous process left in the service manager's fd store,
/// and what the manager passed beside it (socket activation's sockets).
struct StartingHandover {
    var incoming: LiveUpgrade.Incoming?
    var fromStore = false
    /// The devices' state kept in the fd store (a restart after a crash or
    /// a SIGTERM): `incoming` is its joined handover.
    var kept: StateKeeper.Kept?
    var passed: [ServiceManager.ListenedFD] = []

    /// None: a fresh start.
    init() {}

    /// A live upgrade's handover that cannot be read ends the process; an
    /// unusable fd store's is logged and forgotten, and the process starts
    /// afresh. `keeping`: devices keep their state in the fd store from
    /// here (`StateKeeper.enabled`).
    init(logger: Logger, keeping: Bool) throws {
        StateKeeper.enabled = keeping
        do { incoming = try LiveUpgrade.incoming() } catch {
            throw CommandFailure("cannot take over from the previous umdev: \(error.message)")
        }
        if let incoming {
            // The previous process's stored descriptors make way for this one's.
            StoredDescriptors.forgetPrevious(checkOnly: incoming.checkOnly)
            return
        }
        passed = ServiceManager.listenFDs()
        do {
            incoming = try LiveUpgrade.incoming(fromStore: &passed)
            fromStore = incoming != nil
        } catch {
            logger.error("the fd store's handover is unusable, starting afresh: \(error.message)")
        }
        if incoming == nil, let k = StateKeeper.incoming(fromStore: &passed, logger: logger) {
            kept = k
            incoming = k.incoming
            fromStore = true
        }
    }

    /// Once the devices are taken over, or the process started afresh
    /// without them: what the fd store held for no device here leaves it;
    /// a handover of the older kind is forgotten there.
    func finishStore() {
        if let kept { kept.finish() } else if fromStore, let incoming { LiveUpgrade.forgetStored(count: incoming.pool.count) }
    }

    /// The takeover's figures for the log: restore_ms from this process's
    /// start, and (the writer's clock allowing) startup_ms and total_ms from
    /// the moment the handover was written.
    func timing(started: UInt64, now: UInt64) -> Logger.Metadata {
        var t: Logger.Metadata = ["restore_ms": "\(milliseconds(now - started))"]
        // A kept state's writer wrote at its last change, not at the end: no start-up to tell.
        if kept == nil, let written = incoming?.writer?.writtenAt, written > 0, written <= started {
            // Exec (or the restart), loading, runtime start-up.
            t["startup_ms"] = "\(milliseconds(started - written))"
            t["total_ms"] = "\(milliseconds(now - written))"
        }
        return t
    }

    /// Who wrote it, for the log.
    var from: String {
        (incoming?.writer.map { "umdev \($0.version) (pid \($0.pid))" } ?? "the previous umdev") + (fromStore ? " through the fd store" : "")
    }
}
