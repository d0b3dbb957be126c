import CShim
import Foundation
import Glibc
import Handover
import Logging
import PCI
import Locking
import SystemPackage
import UnixSocket
import VFIOUserServer

/// Where the daemon keeps its sockets and definitions, and what it allows.
public struct DaemonConfiguration: Sendable {
    /// Device sockets, display sockets and control.sock; created 0700.
    public var runDirectory: String
    /// One definition file per UUID; created 0700.
    public var configDirectory: String
    /// Budget overrides; the rest are the samples' defaults.
    public var budgets: [Pool: Int] = [:]
    /// How long `stop` waits for a client to release a device it asked to release.
    public var stopTimeout: Double = 10
    /// Control connections served at once; more are refused.
    public var maxControlClients = 16
    /// A listening control socket handed in (socket activation), used
    /// instead of creating one at `controlSocket`; its file is left alone.
    public var inheritedControlSocket: FileDescriptor?
    /// What a live upgrade execs (the path umdev was started from) and
    /// with which arguments; `umdev upgrade --binary` names another.
    public var binary = "/proc/self/exe"
    public var arguments: [String] = CommandLine.arguments

    public init(runDirectory: String, configDirectory: String) {
        self.runDirectory = runDirectory
        self.configDirectory = configDirectory
    }

    public var controlSocket: String { runDirectory + "/control.sock" }

    /// `$XDG_RUNTIME_DIR/umdev`, or `/run/umdev` for root.
    public static var defaultRunDirectory: String {
        if geteuid() == 0 { return "/run/umdev" }
        if let xdg = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], xdg.hasPrefix("/") { return xdg + "/umdev" }
        return "/tmp/umdev-\(geteuid())"
    }

    /// `$XDG_CONFIG_HOME/umdev` (else `~/.config/umdev`), or `/etc/umdev` for root.
    public static var defaultConfigDirectory: String {
        if geteuid() == 0 { return "/etc/umdev" }
        let env = ProcessInfo.processInfo.environment
        if let xdg = env["XDG_CONFIG_HOME"], xdg.hasPrefix("/") { return xdg + "/umdev" }
        return (env["HOME"] ?? NSHomeDirectory()) + "/.config/umdev"
    }
}

/// The lifecycle daemon (`umdev daemon`): serves many device instances,
/// each on its own thread and socket, keeps definitions, accounts budgets,
/// and answers the control socket (Protocol/CONTROL.md).
///
/// Control requests run on a thread per connection. The daemon's state
/// (instances, budgets, definitions) is behind one lock, held only for
/// bookkeeping: building a device, waiting for a client to leave, or
/// touching the disk happen outside it, with the UUID reserved meanwhile.
public final class Daemon: @unchecked Sendable {
    // @unchecked: mutable state is behind `state` and `control`.
    public let configuration: DaemonConfiguration
    let logger: Logger
    let store: DefinitionStore

    struct State {
        var budgets: Budgets
        var instances: [String: Instance] = [:]
        /// Running UUIDs, oldest first (list order).
        var order: [String] = []
        /// UUIDs being created or stopped: no other start or stop may take them.
        var busy: Set<String> = []
        var definitions: [String: Definition] = [:]
    }
    let state: Locked<State>

    struct Control {
        var listen: Int32
        /// Whether `shutdown` removes the control socket's file.
        var ownsFile: Bool
        var clients = 0
        var stopped = false
        /// A live upgrade asked the acceptor to accept nothing for now.
        var pauseRequested = false
        /// The acceptor is waiting out a pause.
        var acceptorHeld = false
        /// A live upgrade is under way (one at a time).
        var upgrading = false
    }
    let control: Locked<Control>
    /// Wakes the acceptor from its poll (a pause, a stop).
    let wake: Int32
    private var acceptThread: pthread_t?
    /// The control connection that asked for the upgrade this process took
    /// over from, waiting for its answer (`answerUpgrade`).
    var upgradeRequester: Int32?
    /// The instances a live upgrade brought, not serving until `start`.
    private var restored: [Instance] = []
    /// Keeps the control socket in the fd store (StateKeeper.enabled).
    private var keeper: StateKeeper?

    /// Creates the directories, claims the control socket, loads the
    /// definitions and starts the `auto` ones. Given a live upgrade's
    /// handover (`incoming`), takes the control socket and every instance
    /// from it instead (auto definitions are running already).
    public init(_ configuration: DaemonConfiguration, logger: Logger, takingOver incoming: LiveUpgrade.Incoming? = nil,
                kept: StateKeeper.Kept? = nil) throws(LifecycleError) {
        self.configuration = configuration
        self.logger = logger
        for dir in [configuration.runDirectory, configuration.configDirectory] { try Self.makePrivateDirectory(dir) }
        store = DefinitionStore(directory: configuration.configDirectory)
        let path = configuration.controlSocket
        wake = umdev_eventfd(0)
        // The control state owns the listener from here; `stop` closes it.
        let fd: Int32
        var ownsFile = configuration.inheritedControlSocket == nil
        var handedOver: [InstanceSection] = []
        if let incoming {
            let daemon: DaemonSection
            (daemon, handedOver) = try Self.daemonSections(incoming)
            fd = try Self.takeControlSocket(daemon, from: incoming.pool)
            ownsFile = daemon.ownsControlFile
            upgradeRequester = try daemon.requester.map { (i) throws(LifecycleError) in
                do throws(DeviceError) { return try incoming.pool.take(i, for: "the upgrade's requester") } catch {
                    close(fd)
                    throw LifecycleError(.invalid, error.message)
                }
            }
        } else if let inherited = configuration.inheritedControlSocket {
            fd = inherited.rawValue
        } else {
            if (try? UnixSocket.connect(path: path)) != nil {
                throw LifecycleError(.exists, "a umdev daemon already answers on \(path)")
            }
            do { fd = try UnixSocket.listen(path: path, backlog: 32).release().rawValue } catch {
                throw LifecycleError(.system, "cannot listen on \(path): \(String(cString: strerror(error.errno)))")
            }
        }
        control = Locked(Control(listen: fd, ownsFile: ownsFile))
        if StateKeeper.enabled {
            let part = LiveUpgrade.DaemonPart(controlListener: fd, ownsControlFile: ownsFile, requester: nil)
            keeper = StateKeeper.keep(daemon: part, logger: logger)
        }
        let (definitions, skipped) = store.load()
        for (file, reason) in skipped {
            logger.error("skipping definition \(file): \(reason)")
        }
        state = Locked(State(budgets: Budgets(configuration.budgets), definitions: definitions))
        logger.notice("\(definitions.count) definition(s) in \(configuration.configDirectory)")
        if incoming == nil { removeStaleSockets() }
        if let incoming {
            do { try restore(handedOver, from: incoming, kept: kept) } catch {
                if let r = upgradeRequester { close(r) }
                close(fd)
                throw error
            }
            return
        }
        for uuid in definitions.keys.sorted() where definitions[uuid]?.start == .auto {
            do {
                let info = try start(uuid: uuid, type: nil, attributes: nil)
                logger.notice("started \(uuid) (\(info.type), auto) on \(info.socket)")
            } catch {
                logger.error("cannot start \(uuid) (auto): \(error.message)")
            }
        }
    }

    deinit { close(wake) }

    /// An instance's socket files a previous daemon left behind when it
    /// died (nothing listens on them any more): removed at a fresh start,
    /// so that the run directory holds what this daemon serves. A socket
    /// something still answers on is left alone.
    private func removeStaleSockets() {
        let dir = configuration.runDirectory
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
        for name in entries where name.hasSuffix(".sock") || name.hasSuffix(".display") {
            let stem = name.hasSuffix(".sock") ? String(name.dropLast(5)) : String(name.dropLast(8))
            guard UUIDs.canonical(stem) == stem else { continue }
            let path = dir + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { continue }
            do { _ = try UnixSocket.connect(path: path) } catch {
                guard error.errno == ECONNREFUSED else { continue }
                if unlink(path) == 0 { logger.notice("removed \(path), a socket a previous daemon left behind") }
            }
        }
    }

    /// Keeps an instance a handover brought until `start` serves it.
    func appendRestored(_ instance: Instance) { restored.append(instance) }

    /// mkdir -p, the last component owner-only. An existing directory must
    /// already be ours and owner-only: it is never chmodded, since a
    /// mistyped `--run-dir /run` must not lock everyone else out of /run.
    static func makePrivateDirectory(_ path: String) throws(LifecycleError) {
        guard path.hasPrefix("/") else { throw LifecycleError(.invalid, "\(path): give an absolute path") }
        var st = stat()
        if stat(path, &st) != 0 {
            var prefix = ""
            for part in path.split(separator: "/") {
                prefix += "/" + part
                if mkdir(prefix, prefix == path ? 0o700 : 0o755) != 0 && errno != EEXIST {
                    throw LifecycleError(.system, "cannot create \(prefix): \(String(cString: strerror(errno)))")
                }
            }
            guard stat(path, &st) == 0 else { throw LifecycleError(.system, "cannot create \(path): \(String(cString: strerror(errno)))") }
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw LifecycleError(.system, "\(path) is not a directory") }
        guard st.st_uid == geteuid() else { throw LifecycleError(.system, "\(path) belongs to uid \(st.st_uid), not to this user") }
        if st.st_mode & 0o077 != 0 {
            let mode = String(st.st_mode & 0o7777, radix: 8)
            throw LifecycleError(.system, "\(path) is open to other users (mode \(mode)); umdev keeps its sockets and definitions in a directory of its own: name a new one (it is created 0700) or chmod 700 this one")
        }
    }

    // MARK: Running

    /// Serves the control socket on a thread of its own.
    public func start() {
        for i in restored { i.startServing() }
        restored = []
        guard let t = Threads.start({ self.acceptLoop() }) else { preconditionFailure("cannot start the control socket's thread") }
        acceptThread = t
    }

    /// Stops answering, stops every instance (dropping their clients) and
    /// removes the sockets. Definitions stay.
    public func shutdown() {
        let fd = control.withLock { c -> Int32 in
            if c.stopped { return -1 }
            c.stopped = true
            return c.listen
        }
        guard fd >= 0 else { return }
        keeper?.discard()
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
        if let t = acceptThread { pthread_join(t, nil); acceptThread = nil }
        close(fd)
        if control.withLock({ $0.ownsFile }) { unlink(configuration.controlSocket) }
        let all = state.withLock { s -> [Instance] in
            let all = s.order.compactMap { s.instances[$0] }
            s.instances = [:]
            s.order = []
            for i in all { s.budgets.release(i.type) }
            return all
        }
        for i in all { i.shutdown() }
        logger.notice("stopped \(all.count) instance(s)")
    }

    /// Instances running now.
    public var instanceCount: Int { state.withLock { $0.instances.count } }

    private func acceptLoop() {
        while true {
            let (listenFD, paused) = control.withLock { ($0.stopped ? -1 : $0.listen, $0.pauseRequested) }
            guard listenFD >= 0 else { return }
            if paused {
                // A live upgrade is writing the handover: connections wait
                // in the backlog, for whichever process serves next.
                control.withLock { $0.acceptorHeld = true }
                while !control.wait(timeout: 3600, until: { !$0.pauseRequested || $0.stopped }) {}
                control.withLock { $0.acceptorHeld = false }
                continue
            }
            var set = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            if poll(&set, 2, -1) < 0 {
                if errno == EINTR { continue }
                logger.error("poll on the control socket: \(String(cString: strerror(errno)))")
                return
            }
            if set[1].revents != 0 {
                var counter: UInt64 = 0
                _ = read(wake, &counter, 8)
            }
            guard set[0].revents != 0, !control.withLock({ $0.pauseRequested }) else { continue }
            let c: Int32
            // The client's thread owns the connection from here.
            do { c = try UnixSocket.accept(FileDescriptor(rawValue: listenFD)).release().rawValue } catch {
                if !control.withLock({ $0.stopped }) { logger.error("control socket: \(error)") }
                return
            }
            let admitted = control.withLock { s -> Bool in
                guard !s.stopped, s.clients < configuration.maxControlClients else { return false }
                s.clients += 1
                return true
            }
            guard admitted else {
                let refusal = ControlResponse.failure(LifecycleError(.busy, "the daemon is serving \(configuration.maxControlClients) control clients; try again"))
                ControlConnection.reply(refusal, on: c, wait: false)
                close(c)
                continue
            }
            let connection = ControlConnection(socket: c, daemon: self)
            let thread = Threads.start(detached: true) {
                // The place is given back before the socket closes, so a
                // client that has read its answer to the end may come straight back.
                connection.serve { connection.daemon.control.withLock { $0.clients -= 1 } }
            }
            if thread == nil {
                control.withLock { $0.clients -= 1 }
                close(c)
            }
        }
    }

    // MARK: Requests

    /// Answers one control request. `descriptor` is the file the request
    /// carried (migrate-save, migrate-load, compat from a saved state),
    /// borrowed for the request.
    /// `connection`: the control connection it came on, for `upgrade` to
    /// hand over (the new process answers it).
    public func handle(_ request: ControlRequest, descriptor: FileDescriptor? = nil, connection: Int32? = nil) -> ControlResponse {
        do {
            let takesDescriptor = ["migrate-save", "migrate-load", "compat"].contains(request.request)
            if descriptor != nil && !takesDescriptor {
                throw LifecycleError(.invalid, "\(request.request) takes no file descriptor")
            }
            var r = ControlResponse()
            switch request.request {
            case "types":
                r.types = types()
            case "list":
                if request.defined == true { r.definitions = definitions() } else { r.instances = instances() }
            case "start":
                let info = try start(uuid: request.uuid, type: request.type, attributes: request.attrs)
                r.uuid = info.uuid
                r.instance = info
                logger.notice("started \(info.uuid) (\(info.type)) on \(info.socket)")
            case "stop":
                let uuid = try Self.uuid(request.uuid)
                r.released = try stop(uuid: uuid, force: request.force ?? false, timeout: request.timeout ?? configuration.stopTimeout)
                r.uuid = uuid
                logger.notice("stopped \(uuid) (client: \(r.released!))")
            case "define":
                r.uuid = try define(uuid: request.uuid, type: request.type, auto: request.auto ?? false, attributes: request.attrs)
            case "undefine":
                let uuid = try Self.uuid(request.uuid)
                try undefine(uuid)
                r.uuid = uuid
            case "modify":
                let uuid = try Self.uuid(request.uuid)
                try modify(uuid, type: request.type, auto: request.auto, add: request.addAttrs, delete: request.delAttrs ?? [])
                r.uuid = uuid
            case "attribute-has", "attribute-get", "attribute-set":
                let uuid = try Self.uuid(request.uuid)
                guard let name = request.name else { throw LifecycleError(.invalid, "\(request.request) needs a name") }
                let instance = try running(uuid)
                let spec = instance.type.attribute(name)
                switch request.request {
                case "attribute-has":
                    r.has = spec != nil
                    r.kind = spec?.kind
                case "attribute-get":
                    guard let spec else { throw LifecycleError(.notFound, "\(instance.type.id) has no attribute \(name)") }
                    r.value = try instance.value(of: spec)
                    r.kind = spec.kind
                default:
                    guard let spec else { throw LifecycleError(.notFound, "\(instance.type.id) has no attribute \(name)") }
                    guard let value = request.value else { throw LifecycleError(.invalid, "attribute-set needs a value") }
                    try setAttribute(instance, spec, value)
                    r.value = value
                    r.kind = spec.kind
                }
            case "reset":
                let uuid = try Self.uuid(request.uuid)
                let instance = try running(uuid)
                guard instance.server.withIdleDevice({ $0.resetDevice() }) != nil else {
                    throw LifecycleError(.busy, "a client holds \(uuid): it resets the device itself (DEVICE_RESET)")
                }
                r.uuid = uuid
            case "migrate-save":
                r.bytes = try migrateSave(try Self.uuid(request.uuid), into: try Self.file(descriptor, writing: true))
            case "migrate-load":
                r.bytes = try migrateLoad(try Self.uuid(request.uuid), from: try Self.file(descriptor, writing: false))
            case "compat":
                try compat(request, descriptor: descriptor, into: &r)
            case "upgrade":
                // Returns only if this process goes on; the new one answers otherwise.
                throw upgrade(binary: request.path, requester: connection)
            default:
                throw LifecycleError(.invalid, "unknown request \"\(request.request.prefix(64))\"; known: \(Self.requests.joined(separator: ", "))")
            }
            return r
        } catch let e as LifecycleError {
            return .failure(e)
        } catch {
            return .failure(LifecycleError(.system, "\(error)"))
        }
    }

    public static let requests = ["types", "list", "start", "stop", "define", "undefine", "modify",
                                  "attribute-get", "attribute-set", "attribute-has", "reset",
                                  "migrate-save", "migrate-load", "compat", "upgrade"]

    static func uuid(_ s: String?) throws(LifecycleError) -> String {
        guard let s else { throw LifecycleError(.invalid, "this request needs a uuid") }
        guard let u = UUIDs.canonical(s) else { throw LifecycleError(.invalid, "\"\(s.prefix(64))\" is not a UUID") }
        return u
    }

    static func file(_ file: FileDescriptor?, writing: Bool) throws(LifecycleError) -> FileDescriptor {
        guard let file else { throw LifecycleError(.invalid, "this request carries the state file as a descriptor (SCM_RIGHTS)") }
        let fd = file.rawValue
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw LifecycleError(.invalid, "the descriptor must be a regular file")
        }
        let mode = fcntl(fd, F_GETFL) & O_ACCMODE
        guard writing ? (mode == O_WRONLY || mode == O_RDWR) : (mode == O_RDONLY || mode == O_RDWR) else {
            throw LifecycleError(.invalid, "the file is not open for \(writing ? "writing" : "reading")")
        }
        return file
    }

    func running(_ uuid: String) throws(LifecycleError) -> Instance {
        guard let i = state.withLock({ $0.instances[uuid] }) else {
            throw LifecycleError(.notFound, "no instance \(uuid) is running")
        }
        return i
    }

    // MARK: Types and listing

    public func types() -> [TypeInfo] {
        let budgets = state.withLock { $0.budgets }
        return Catalog.all.compactMap { $0.info(available: budgets.available($0)) }
    }

    public func instances() -> [InstanceInfo] {
        let (all, defined) = state.withLock { s in (s.order.compactMap { s.instances[$0] }, Set(s.definitions.keys)) }
        return all.map { i in
            var info = i.info
            info.defined = defined.contains(i.uuid)
            return info
        }
    }

    public func definitions() -> [DefinitionInfo] {
        state.withLock { s in
            s.definitions.keys.sorted().map { DefinitionInfo(uuid: $0, definition: s.definitions[$0]!, running: s.instances[$0] != nil) }
        }
    }

    // MARK: Start and stop

    /// Starts an instance: of `type` with `attributes`, or (no type) as the
    /// definition with this UUID says. The budget is committed before the
    /// device is built, in the same step as the check.
    public func start(uuid requested: String?, type typeID: String?, attributes: Attributes?) throws(LifecycleError) -> InstanceInfo {
        let uuid: String
        if let requested { uuid = try Self.uuid(requested) } else if typeID != nil { uuid = UUIDs.random() } else {
            throw LifecycleError(.invalid, "start needs a type, or the uuid of a definition")
        }
        guard !control.withLock({ $0.stopped }) else { throw LifecycleError(.busy, "the daemon is stopping") }
        let (type, attrs) = try state.withLock { s throws(LifecycleError) -> (DeviceType, Attributes) in
            guard s.instances[uuid] == nil, !s.busy.contains(uuid) else {
                throw LifecycleError(.exists, "an instance with UUID \(uuid) is already running")
            }
            // A type makes a transient instance; no type starts the definition.
            var typeID = typeID
            var attrs = attributes ?? Attributes()
            if typeID == nil {
                guard let d = s.definitions[uuid] else { throw LifecycleError(.notFound, "no definition \(uuid): give a type to start it") }
                typeID = d.type
                if attributes == nil { attrs = d.attributes }
            }
            guard let typeID, let type = Catalog.type(typeID) else {
                throw LifecycleError(.notFound, "no type \(typeID ?? "") (see umdev types)")
            }
            if let problem = Validation.problem(type: type, attributes: attrs) { throw LifecycleError(.invalid, problem) }
            try s.budgets.commit(type)
            s.busy.insert(uuid)
            return (type, attrs)
        }
        let instance: Instance
        do {
            let socket = "\(configuration.runDirectory)/\(uuid).sock"
            var display: String?
            if type.display.kind != "none" {
                let wanted = attrs["display_socket"]
                display = wanted == "none" ? nil : wanted ?? "\(configuration.runDirectory)/\(uuid).display"
            }
            instance = try Instance(uuid: uuid, type: type, attributes: attrs, socket: socket, displayPath: display, logger: logger)
        } catch {
            state.withLock { s in
                s.budgets.release(type)
                s.busy.remove(uuid)
            }
            throw error
        }
        let defined = state.withLock { s -> Bool in
            s.busy.remove(uuid)
            s.instances[uuid] = instance
            s.order.append(uuid)
            return s.definitions[uuid] != nil
        }
        var info = instance.info
        info.defined = defined
        return info
    }

    /// Stops an instance. An attached client is first asked to release the
    /// device (REQ) and given `timeout` seconds; `force` drops it instead.
    /// Returns how the client left: "none" (no client), "released", "dropped".
    public func stop(uuid: String, force: Bool, timeout: Double) throws(LifecycleError) -> String {
        let instance = try state.withLock { s throws(LifecycleError) -> Instance in
            guard let i = s.instances[uuid] else { throw LifecycleError(.notFound, "no instance \(uuid) is running") }
            guard !s.busy.contains(uuid) else { throw LifecycleError(.busy, "\(uuid) is already being stopped") }
            s.busy.insert(uuid)
            return i
        }
        var outcome = "none"
        if instance.server.isAttached {
            let pid = instance.server.clientPID.map { "pid \($0)" } ?? "a client"
            if force {
                instance.server.dropClient()
                outcome = "dropped"
            } else if instance.server.requestRelease() {
                logger.notice("asked \(pid) to release \(uuid) (REQ); waiting up to \(timeout) s")
                guard instance.server.waitUntilDetached(seconds: min(max(timeout, 0), 3600)) else {
                    state.withLock { _ = $0.busy.remove(uuid) }
                    throw LifecycleError(.busy, "\(pid) was asked to release \(uuid) and still holds it after \(timeout) s; --force drops it")
                }
                outcome = "released"
            } else {
                state.withLock { _ = $0.busy.remove(uuid) }
                throw LifecycleError(.busy, "\(pid) holds \(uuid) and registered no REQ eventfd to be asked to release it; "
                                     + "detach it from the VM first, or --force drops it")
            }
        }
        instance.shutdown()
        state.withLock { s in
            s.instances[uuid] = nil
            s.order.removeAll { $0 == uuid }
            s.budgets.release(instance.type)
            s.busy.remove(uuid)
        }
        return outcome
    }

    // MARK: Definitions

    /// Stores a definition: of `type` with `attributes`, or (no type) of the
    /// running instance with this UUID as it was created. Returns the UUID.
    public func define(uuid requested: String?, type typeID: String?, auto: Bool, attributes: Attributes?) throws(LifecycleError) -> String {
        let uuid = try requested.map { (s) throws(LifecycleError) in try Self.uuid(s) } ?? UUIDs.random()
        let definition: Definition
        if let typeID {
            guard let type = Catalog.type(typeID) else { throw LifecycleError(.notFound, "no type \(typeID) (see umdev types)") }
            let attrs = attributes ?? Attributes()
            if let problem = Validation.problem(type: type, attributes: attrs) { throw LifecycleError(.invalid, problem) }
            definition = Definition(type: type.id, start: auto ? .auto : .manual, attributes: attrs)
        } else {
            guard requested != nil, let i = state.withLock({ $0.instances[uuid] }) else {
                throw LifecycleError(.invalid, "define needs a type, or the uuid of a running instance to keep")
            }
            guard attributes == nil else { throw LifecycleError(.invalid, "a running instance is defined with the attributes it was created with") }
            definition = Definition(type: i.type.id, start: auto ? .auto : .manual, attributes: i.given)
        }
        try state.withLock { s throws(LifecycleError) in
            guard s.definitions[uuid] == nil else { throw LifecycleError(.exists, "\(uuid) is already defined (modify changes it)") }
            try store.save(uuid, definition)
            s.definitions[uuid] = definition
        }
        logger.notice("defined \(uuid) (\(definition.type), \(definition.start.rawValue))")
        return uuid
    }

    public func undefine(_ uuid: String) throws(LifecycleError) {
        try state.withLock { s throws(LifecycleError) in
            guard s.definitions[uuid] != nil else { throw LifecycleError(.notFound, "no definition \(uuid)") }
            try store.remove(uuid)
            s.definitions[uuid] = nil
        }
        logger.notice("undefined \(uuid)")
    }

    /// Changes a definition (applies at its next start, as mdevctl's modify):
    /// its type, auto/manual, attributes removed by name and appended.
    public func modify(_ uuid: String, type typeID: String?, auto: Bool?, add: Attributes?, delete: [String]) throws(LifecycleError) {
        guard typeID != nil || auto != nil || add != nil || !delete.isEmpty else {
            throw LifecycleError(.invalid, "modify needs a type, auto, add_attrs or del_attrs")
        }
        try state.withLock { s throws(LifecycleError) in
            guard var d = s.definitions[uuid] else { throw LifecycleError(.notFound, "no definition \(uuid)") }
            if let typeID { d.type = typeID }
            if let auto { d.start = auto ? .auto : .manual }
            for name in delete {
                guard d.attributes[name] != nil else { throw LifecycleError(.notFound, "\(uuid) has no attribute \(name) to remove") }
                d.attributes.list.removeAll { $0.name == name }
            }
            d.attributes.list += add?.list ?? []
            guard let type = Catalog.type(d.type) else { throw LifecycleError(.notFound, "no type \(d.type) (see umdev types)") }
            if let problem = Validation.problem(type: type, attributes: d.attributes) { throw LifecycleError(.invalid, problem) }
            try store.save(uuid, d)
            s.definitions[uuid] = d
        }
        logger.notice("modified \(uuid)")
    }

    // MARK: Attributes

    func setAttribute(_ instance: Instance, _ spec: AttributeSpec, _ value: String) throws(LifecycleError) {
        switch spec.kind {
        case .creation:
            throw LifecycleError(.invalid, "\(spec.name) is fixed when an instance is created: stop it and start it with --attr \(spec.name)=VALUE")
        case .status:
            throw LifecycleError(.invalid, "\(spec.name) is a status: it can be read, not set")
        case .runtime:
            if let problem = spec.problem(with: value) { throw LifecycleError(.invalid, "\(spec.name)=\(value): \(problem)") }
            try instance.set(spec, value)
        }
    }
}
