import CShim
import Glibc
import Handover
import PCI
import ServiceManager
import UnixSocket
import VFIOUserServer

// A live upgrade of `umdev daemon` (SIGUSR2, or `umdev upgrade` over the
// control socket): the daemon checks the new binary against a handover of
// everything it serves, then stops between messages, writes the handover
// again and execs the binary (LiveUpgrade). The new process takes over
// the control socket, every instance with its UUID, attributes, device,
// listener and client, and answers the control connection that asked.

extension Daemon {
    /// How long an upgrade waits for control requests already running to
    /// finish before it gives up (they are short: one request each).
    static let drainSeconds = 5.0

    /// Replaces this process with `binary` (default: the path umdev was
    /// started from), handing everything over. Returns only if the upgrade
    /// did not happen, with why; every instance is then serving as before.
    /// `requester`: the control connection that asked, which the new process
    /// answers.
    public func upgrade(binary requested: String?, requester: Int32?) -> LifecycleError {
        let binary = requested ?? configuration.binary
        let asker = requester == nil ? "SIGUSR2" : "a control client"
        guard binary.hasPrefix("/"), binary.utf8.count < Int(PATH_MAX), !binary.utf8.contains(0) else {
            return LifecycleError(.invalid, "the binary to upgrade to is an absolute path, not \"\(binary.prefix(256))\"")
        }
        let began = control.withLock { c -> LifecycleError? in
            if c.stopped { return LifecycleError(.busy, "the daemon is stopping") }
            if c.upgrading { return LifecycleError(.busy, "an upgrade is already under way") }
            c.upgrading = true
            return nil
        }
        if let began { return refused(began) }
        defer { control.withLock { $0.upgrading = false } }
        logger.notice("upgrade requested (\(asker)): handing over to \(binary)")
        // First the check, with every instance serving again meanwhile.
        let trial: (bytes: [UInt8], fds: [Int32])
        switch handover(requester: requester, holdControl: false) {
        case .failure(let e): return refused(e)
        case .success(let (h, resume)): trial = h; resume()
        }
        let checkStart = monotonicNanoseconds()
        var arguments = configuration.arguments
        if !arguments.isEmpty { arguments[0] = binary }
        if let why = LiveUpgrade.check(binary: binary, arguments: arguments, handover: trial) {
            logger.error("upgrade failed, still serving: \(why)")
            return LifecycleError(.system, why)
        }
        let pauseStart = monotonicNanoseconds()
        logger.info("the new binary read the handover; switching", metadata: ["check_ms": "\(milliseconds(pauseStart - checkStart))"])
        let final: (bytes: [UInt8], fds: [Int32])
        let resume: () -> Void
        switch handover(requester: requester, holdControl: true) {
        case .failure(let e): return refused(e)
        case .success(let (h, r)): (final, resume) = (h, r)
        }
        logger.info("handover written", metadata: ["pause_ms": "\(milliseconds(monotonicNanoseconds() - pauseStart))",
                                                   "bytes": "\(final.bytes.count)", "descriptors": "\(final.fds.count)",
                                                   "instances": "\(instanceCount)"])
        ServiceManager.notify("RELOADING=1\nMONOTONIC_USEC=\(monotonicNanoseconds() / 1000)\nSTATUS=upgrading")
        let why = LiveUpgrade.exec(binary: binary, arguments: arguments, handover: final)
        resume()
        logger.error("upgrade failed, still serving: \(why)")
        ServiceManager.notify("READY=1\nSTATUS=upgrade failed: \(why)")
        return LifecycleError(.system, why)
    }

    /// A planned restart under a service manager that keeps descriptors
    /// (SIGTERM with an fd store): everything stops between messages and
    /// goes into the manager's fd store as a handover, for the process it
    /// starts next (`Daemon(takingOver:)` from `$LISTEN_FDS`). Nil when the
    /// store holds it all; the caller then exits without closing anything.
    /// Otherwise why: every instance is serving again, for a normal stop.
    public func handOverToStore() -> String? {
        let began = control.withLock { c -> String? in
            if c.stopped { return "the daemon is stopping" }
            if c.upgrading { return "an upgrade is under way" }
            c.upgrading = true
            return nil
        }
        if let began { return began }
        defer { control.withLock { $0.upgrading = false } }
        let started = monotonicNanoseconds()
        switch handover(requester: nil, holdControl: true) {
        case .failure(let e): return e.message
        case .success(let (h, resume)):
            if let why = LiveUpgrade.store(h) {
                resume()
                return why
            }
            logger.notice("handed \(instanceCount) instance(s) to the service manager's fd store for the next start",
                          metadata: ["store_ms": "\(milliseconds(monotonicNanoseconds() - started))", "descriptors": "\(h.fds.count)",
                                     "bytes": "\(h.bytes.count)"])
            return nil
        }
    }

    private func refused(_ e: LifecycleError) -> LifecycleError {
        logger.error("upgrade refused, still serving: \(e.message)")
        return e
    }

    /// Everything paused and written into a handover, with what undoes the
    /// pause. `holdControl`: also stop accepting control connections and
    /// wait for the running ones (but the requester's) to finish, so the
    /// instances and budgets cannot change before exec.
    private func handover(requester: Int32?, holdControl: Bool)
        -> Result<((bytes: [UInt8], fds: [Int32]), () -> Void), LifecycleError> {
        let paused: [(Instance, DeviceServer.Paused)]
        let resume: () -> Void
        switch pauseAll(requester: requester, holdControl: holdControl) {
        case .failure(let e): return .failure(e)
        case .success(let (p, r)): (paused, resume) = (p, r)
        }
        let (listener, ownsFile) = control.withLock { ($0.listen, $0.ownsFile) }
        let devices = paused.map { i, p in
            LiveUpgrade.Device(instance: i.uuid, host: i.server.host, paused: p, ownsSocketFile: i.server.ownsSocketFile,
                               socketPath: i.server.path, preface: [i.section.section], display: i.displaySocket)
        }
        do {
            let h = try LiveUpgrade.write(devices, daemon: .init(controlListener: listener, ownsControlFile: ownsFile, requester: requester))
            return .success((h, resume))
        } catch {
            resume()
            return .failure(LifecycleError(.busy, error.message))
        }
    }

    /// Every instance stopped between messages (and, with `holdControl`,
    /// the control socket held, its running requests but the requester's
    /// finished), with what undoes it.
    private func pauseAll(requester: Int32?, holdControl: Bool)
        -> Result<([(Instance, DeviceServer.Paused)], () -> Void), LifecycleError> {
        var paused: [DeviceServer] = []
        var heldControl = false
        let resume = { [self] in
            for s in paused { s.resume() }
            if heldControl { control.withLock { $0.pauseRequested = false } }
        }
        if holdControl {
            control.withLock { $0.pauseRequested = true }
            heldControl = true
            var one: UInt64 = 1
            _ = write(wake, &one, 8)
            let others = requester == nil ? 0 : 1
            guard control.wait(timeout: Self.drainSeconds, until: { $0.acceptorHeld || $0.stopped }),
                  control.wait(timeout: Self.drainSeconds, until: { $0.clients <= others || $0.stopped }) else {
                let running = control.withLock { $0.clients } - others
                resume()
                return .failure(LifecycleError(.busy, "\(running) control request(s) still running after \(Int(Self.drainSeconds)) s"))
            }
        }
        let (instances, busy) = state.withLock { s in (s.order.compactMap { s.instances[$0] }, s.busy) }
        if holdControl, let uuid = busy.first {
            resume()
            return .failure(LifecycleError(.busy, "\(uuid) is being started or stopped"))
        }
        // Every device asked at once, then waited for: the pause lasts as long as the slowest one's request.
        for i in instances {
            guard i.server.requestPause() else {
                resume()
                return .failure(LifecycleError(.busy, "\(i.uuid) is stopping or already pausing"))
            }
            paused.append(i.server)
        }
        var all: [(Instance, DeviceServer.Paused)] = []
        for i in instances {
            guard let p = i.server.awaitPause() else {
                resume()
                return .failure(LifecycleError(.busy, "\(i.uuid) did not stop between requests within 5 s"))
            }
            all.append((i, p))
        }
        return .success((all, resume))
    }

    // MARK: The new process

    /// The daemon's section and its instances' of a handover.
    static func daemonSections(_ incoming: LiveUpgrade.Incoming) throws(LifecycleError) -> (DaemonSection, [InstanceSection]) {
        let count = incoming.pool.count
        do throws(DeviceError) {
            let daemons = try incoming.handover.sections(.daemon).map { (s) throws(DeviceError) in try DaemonSection(s.payload, descriptorCount: count) }
            guard daemons.count == 1 else {
                throw DeviceError(EINVAL, daemons.isEmpty ? "the handover is not a daemon's (umdev serve wrote it?)" : "the handover has \(daemons.count) daemon sections")
            }
            let instances = try incoming.handover.sections(.instance).map { (s) throws(DeviceError) in try InstanceSection(s.payload) }
            return (daemons[0], instances)
        } catch {
            throw LifecycleError(.invalid, error.message)
        }
    }

    /// The control socket the handover brought, checked to be a listening UNIX socket.
    static func takeControlSocket(_ d: DaemonSection, from pool: DescriptorPool) throws(LifecycleError) -> Int32 {
        let fd: Int32
        do throws(DeviceError) { fd = try pool.take(d.controlListener, for: "the control socket") } catch { throw LifecycleError(.invalid, error.message) }
        guard InheritedSocket.listens(fd) else {
            close(fd)
            throw LifecycleError(.invalid, "the handed-over control socket is not a listening UNIX socket")
        }
        return fd
    }

    /// Rebuilds the handed-over instances, their budgets committed again;
    /// they serve from `start`.
    /// `kept`: the state kept in the fd store, after a crash or a restart:
    /// an instance that cannot be resumed from it is logged and started
    /// afresh as it was created, and the others go on.
    func restore(_ sections: [InstanceSection], from incoming: LiveUpgrade.Incoming, kept: StateKeeper.Kept?) throws(LifecycleError) {
        var afresh: [InstanceSection] = []
        for section in sections {
            let instance: Instance
            do { instance = try Instance.restored(section, from: incoming, logger: logger) } catch {
                guard kept != nil else { throw error }
                logger.error("cannot resume \(section.uuid.prefix(64)) from the fd store, starting it afresh: \(error.message)")
                afresh.append(section)
                continue
            }
            try state.withLock { s throws(LifecycleError) in
                guard s.instances[instance.uuid] == nil else { throw LifecycleError(.invalid, "the handover holds \(instance.uuid) twice") }
                do throws(LifecycleError) { try s.budgets.commit(instance.type) } catch {
                    throw LifecycleError(.budget, "the handover's \(instance.uuid) does not fit: \(error.message)")
                }
                s.instances[instance.uuid] = instance
                s.order.append(instance.uuid)
            }
            appendRestored(instance)
        }
        for section in afresh {
            let given = Attributes(section.given.map { ($0.name, $0.value) })
            do {
                let info = try start(uuid: section.uuid, type: section.type, attributes: given)
                logger.notice("started \(info.uuid) (\(info.type)) afresh on \(info.socket)")
            } catch {
                logger.error("cannot start \(section.uuid.prefix(64)) afresh: \(error.message)")
            }
        }
        // A state not even the instance's type can be read from: its definition, if it has one, says how to start it.
        for name in kept?.unreadable ?? [] where UUIDs.canonical(name) == name {
            guard state.withLock({ $0.definitions[name] != nil }) else {
                logger.error("\(name) is lost: its state in the fd store cannot be read and it has no definition to start it from")
                continue
            }
            do {
                let info = try start(uuid: name, type: nil, attributes: nil)
                logger.notice("started \(info.uuid) (\(info.type)) afresh from its definition on \(info.socket)")
            } catch {
                logger.error("cannot start \(name) afresh from its definition: \(error.message)")
            }
        }
    }

    /// A planned restart while every device keeps its state in the fd
    /// store (SIGTERM): each finishes the request it is on, its state is
    /// saved with what it has read and not yet handled, and nothing else is
    /// needed: the caller exits, leaving every file in place. Nil when all
    /// is saved; otherwise why (what was saved last stays, the devices serve on).
    public func saveForRestart() -> String? {
        let began = monotonicNanoseconds()
        switch pauseAll(requester: nil, holdControl: true) {
        case .failure(let e): return e.message
        case .success(let (paused, _)):
            for (instance, p) in paused { instance.server.saveState(p) }
            logger.notice("every instance's state is in the service manager's fd store for the next start",
                          metadata: ["save_ms": "\(milliseconds(monotonicNanoseconds() - began))", "instances": "\(paused.count)",
                                     "descriptors": "\(StoredDescriptors.shared.count)"])
            return nil
        }
    }

    /// Answers the control connection that asked for the upgrade this
    /// process took over from (nothing if SIGUSR2 asked).
    public func answerUpgrade(from previous: Writer?) {
        guard let socket = upgradeRequester else { return }
        upgradeRequester = nil
        var r = ControlResponse()
        r.upgrade = UpgradeInfo(pid: getpid(), previousVersion: previous?.version ?? "", version: LiveUpgrade.umdevVersion,
                                instances: instanceCount)
        ControlConnection.reply(r, on: socket, wait: false)
        close(socket)
    }
}
