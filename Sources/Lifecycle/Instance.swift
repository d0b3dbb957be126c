import Glibc
import Handover
import Logging
import MBochs
import MTTY
import PCI
import Locking
import VFIOUserServer

/// One running device: its model, its device socket and serving thread,
/// and its display socket when it has a display.
final class Instance: @unchecked Sendable {
    // @unchecked: everything is immutable except `runtime`, behind its
    // lock; the device itself is reached only through `server`, whose
    // thread owns it while a client is attached.
    let uuid: String
    let type: DeviceType
    /// Attributes as given at creation (creation and runtime ones, in order).
    let given: Attributes
    let server: DeviceServer
    let display: DisplayServer?
    /// Fixed facts, read off the model before its thread started.
    let profile: DeviceProfile
    let identity: MigrationIdentity?
    let readable: ClosedRange<Int>
    /// Where each mtty port's host end is (pty path, socket path, or nil for loopback).
    let lines: [String?]
    let planes: PlanePublisher?
    /// Runtime attributes set since creation.
    private let runtime: Locked<[String: String]>
    /// Keeps the instance's state in the fd store (StateKeeper.enabled); set before it serves.
    private var keeper: StateKeeper?

    private init(uuid: String, type: DeviceType, given: Attributes, runtime settings: [String: String],
                 server: DeviceServer, display: DisplayServer?) {
        self.uuid = uuid
        self.type = type
        self.given = given
        runtime = Locked(settings)
        self.server = server
        self.display = display
        let device = server.host.device
        profile = DeviceProfile(device: device)
        identity = device.migrationIdentity
        readable = device.readableStateVersions
        lines = (device as? MTTY)?.backendNames ?? []
        planes = (device as? DisplayDevice)?.planes
    }

    /// Builds the device, applies `attributes` in order, and starts serving
    /// it on `socket` (and its display on `displayPath`).
    convenience init(uuid: String, type: DeviceType, attributes: Attributes, socket: String, displayPath: String?,
                     logger: Logger) throws(LifecycleError) {
        let (device, settings) = try Self.make(type, attributes)
        let deviceLogger = Self.logger(logger, uuid)
        let host = DeviceHost(device: device, typeName: type.id)
        let server: DeviceServer
        do { server = try DeviceServer(host: host, path: socket, logger: deviceLogger, pollMicroseconds: Self.poll(attributes)) } catch {
            throw LifecycleError(.system, "cannot listen on \(socket): \(error.message)")
        }
        var display: DisplayServer?
        if let displayPath {
            do { display = try DisplayServer(description: host.description, path: displayPath, logger: deviceLogger) } catch {
                server.stop()
                throw LifecycleError(.system, "cannot listen on \(displayPath): \(error.message)")
            }
        }
        self.init(uuid: uuid, type: type, given: attributes, runtime: settings, server: server, display: display)
        keepState(logger: logger)
        startServing()
    }

    /// From here the instance's state is kept in the fd store, when devices
    /// keep it (in the state memfd the store brought for it, if it did).
    func keepState(logger: Logger) {
        guard StateKeeper.enabled else { return }
        let display = displaySocket
        let preface = { [unowned self] in [self.section.section] }
        let l = Self.logger(logger, uuid)
        keeper = StateKeeper.keep(server, name: uuid, instance: uuid, preface: preface, display: display, logger: l)
    }

    /// An instance a live upgrade handed over (`section`, and its device's
    /// sections in `incoming`): the device rebuilt as it was created, its
    /// state, listener and client restored. Not serving until `startServing`.
    static func restored(_ section: InstanceSection, from incoming: LiveUpgrade.Incoming, logger: Logger) throws(LifecycleError) -> Instance {
        let uuid = section.uuid
        guard UUIDs.canonical(uuid) == uuid else { throw LifecycleError(.invalid, "the handover names an instance \"\(uuid.prefix(64))\", not a UUID") }
        guard let type = Catalog.type(section.type) else {
            throw LifecycleError(.invalid, "the handover holds \(uuid) of type \(section.type.prefix(64)), which this umdev does not know")
        }
        let given = Attributes(section.given.map { ($0.name, $0.value) })
        if let problem = Validation.problem(type: type, attributes: given) { throw LifecycleError(.invalid, "the handover's \(uuid): \(problem)") }
        var settings: [String: String] = [:]
        for p in section.runtime {
            guard let spec = type.attribute(p.name), spec.kind == .runtime, spec.problem(with: p.value) == nil else {
                throw LifecycleError(.invalid, "the handover's \(uuid) sets \(p.name.prefix(64)), not a runtime attribute of \(type.id) with a valid value")
            }
            settings[p.name] = p.value
        }
        let restored: LiveUpgrade.Restored
        do throws(DeviceError) {
            restored = try LiveUpgrade.restore(incoming, instance: uuid, logger: Self.logger(logger, uuid),
                                             pollMicroseconds: Self.poll(given)) { () throws(DeviceError) in
                do throws(LifecycleError) { return (try Self.make(type, given).device, type.id) } catch { throw DeviceError(EINVAL, error.message) }
            }
        } catch {
            throw LifecycleError(.invalid, "\(uuid): \(error.message)")
        }
        let server = restored.server
        var display: DisplayServer?
        if let d = restored.display {
            if server.host.device is DisplayDevice {
                display = d.server(description: server.host.description, logger: Self.logger(logger, uuid))
            } else {
                close(d.listener)
            }
        }
        let instance = Instance(uuid: uuid, type: type, given: given, runtime: settings, server: server, display: display)
        instance.keepState(logger: logger)
        return instance
    }

    /// The display socket as a handover carries it.
    var displaySocket: LiveUpgrade.DisplaySocket? { display.flatMap(LiveUpgrade.DisplaySocket.init) }

    /// The device `type` makes with `attributes`, runtime ones applied in order.
    private static func make(_ type: DeviceType, _ attributes: Attributes) throws(LifecycleError) -> (device: VFIODevice, runtime: [String: String]) {
        let device: VFIODevice
        do { device = try type.make(attributes) } catch {
            throw LifecycleError(.system, "cannot create the \(type.id) device: \(error.message)")
        }
        var settings: [String: String] = [:]
        for (name, value) in attributes.list where type.attribute(name)?.kind == .runtime {
            try apply(name, value, to: device)
            settings[name] = value
        }
        return (device, settings)
    }

    private static func logger(_ logger: Logger, _ uuid: String) -> Logger {
        var l = logger
        l[metadataKey: "uuid"] = "\(uuid)"
        return l
    }

    private static func poll(_ attributes: Attributes) -> Int { Int(attributes["poll_us"] ?? "0") ?? 0 }

    /// Starts the device's and the display's threads.
    func startServing() {
        server.start()
        display?.start()
    }

    /// What a handover carries of it besides the device.
    var section: InstanceSection {
        let settings = runtime.withLock { $0 }
        return InstanceSection(uuid: uuid, type: type.id, given: given.list.map { .init($0.name, $0.value) },
                               runtime: settings.keys.sorted().map { .init($0, settings[$0]!) })
    }

    /// Stops serving and removes both sockets; the device goes with the instance.
    func shutdown() {
        // Out of the fd store first: a crash while stopping must not bring it back.
        keeper?.discard()
        display?.stop()
        server.stop()
    }

    var socket: String { server.path }

    var info: InstanceInfo {
        InstanceInfo(uuid: uuid, type: type.id, state: server.isAttached ? "attached" : "running", socket: socket,
                     displaySocket: display?.path, clientPID: server.clientPID,
                     ports: lines.isEmpty ? nil : lines.map { $0 ?? "loopback" }, attrs: given, defined: false, device: profile)
    }

    // MARK: Attributes

    /// A runtime setting's effect on the device. Called before the device
    /// is served, or while it is borrowed idle.
    static func apply(_ name: String, _ value: String, to device: VFIODevice) throws(LifecycleError) {
        switch name {
        case "edid_resolution":
            guard let bochs = device as? MBochs, let (w, h) = Catalog.resolution(value) else {
                throw LifecycleError(.invalid, "edid_resolution=\(value): WIDTHxHEIGHT on an mbochs device")
            }
            do { try bochs.preferResolution(width: w, height: h) } catch {
                throw LifecycleError(.invalid, "edid_resolution=\(value): \(error.message)")
            }
        default:
            break  // label: kept by the daemon only
        }
    }

    /// The current value of `spec`, an attribute of this instance's type.
    func value(of spec: AttributeSpec) throws(LifecycleError) -> String {
        switch (spec.kind, spec.name) {
        case (.creation, "display_socket"):
            return display?.path ?? "none"
        case (.creation, let name):
            return given[name] ?? spec.defaultValue ?? ""
        case (.runtime, "edid_resolution"):
            let answer = server.withIdleDevice { host -> String? in
                (host.device as? MBochs)?.preferredResolution.map { "\($0.width)x\($0.height)" }
            }
            guard let answer else {
                throw LifecycleError(.busy, "a client holds \(uuid) and owns its EDID region: edid_resolution is read and set while no client is attached")
            }
            return answer ?? ""
        case (.runtime, let name):
            return runtime.withLock { $0[name] } ?? ""
        case (.status, "state"):
            return server.isAttached ? "attached" : "running"
        case (.status, "socket"):
            return socket
        case (.status, "client_pid"):
            return server.clientPID.map(String.init) ?? ""
        case (.status, "plane"):
            return planes.map { "\($0.current())" } ?? ""
        case (.status, let name) where name.hasPrefix("port") && name.hasSuffix("_host"):
            let port = Int(name.dropFirst(4).dropLast(5)) ?? -1
            guard lines.indices.contains(port) else { return "" }
            return lines[port] ?? "loopback"
        default:
            return ""
        }
    }

    /// Sets runtime attribute `spec` to `value` (already validated).
    func set(_ spec: AttributeSpec, _ value: String) throws(LifecycleError) {
        if spec.name == "label" {
            runtime.withLock { $0[spec.name] = value }
            // Saved now if no client holds the device, else with its next change.
            _ = server.withIdleDevice { _ in }
            return
        }
        let outcome = server.withIdleDevice { host -> LifecycleError? in
            do throws(LifecycleError) { try Self.apply(spec.name, value, to: host.device); return nil } catch { return error }
        }
        guard let outcome else {
            throw LifecycleError(.busy, "a client holds \(uuid) and owns its device: \(spec.name) is set while no client is attached")
        }
        if let outcome { throw outcome }
        runtime.withLock { $0[spec.name] = value }
        _ = server.withIdleDevice { _ in }
    }
}
