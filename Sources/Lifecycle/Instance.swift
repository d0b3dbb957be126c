import Glibc
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

    /// Builds the device, applies `attributes` in order, and starts serving
    /// it on `socket` (and its display on `displayPath`).
    init(uuid: String, type: DeviceType, attributes: Attributes, socket: String, displayPath: String?,
         logger: Logger) throws(LifecycleError) {
        self.uuid = uuid
        self.type = type
        given = attributes
        let device: VFIODevice
        do { device = try type.make(attributes) } catch {
            throw LifecycleError(.system, "cannot create the \(type.id) device: \(error.message)")
        }
        var settings: [String: String] = [:]
        for (name, value) in attributes.list where type.attribute(name)?.kind == .runtime {
            try Self.apply(name, value, to: device)
            settings[name] = value
        }
        runtime = Locked(settings)
        profile = DeviceProfile(device: device)
        identity = device.migrationIdentity
        readable = device.readableStateVersions
        lines = (device as? MTTY)?.backendNames ?? []
        planes = (device as? DisplayDevice)?.planes
        var deviceLogger = logger
        deviceLogger[metadataKey: "uuid"] = "\(uuid)"
        let host = DeviceHost(device: device, typeName: type.id)
        let poll = Int(attributes["poll_us"] ?? "0") ?? 0
        do { server = try DeviceServer(host: host, path: socket, logger: deviceLogger, pollMicroseconds: poll) } catch {
            throw LifecycleError(.system, "cannot listen on \(socket): \(error.message)")
        }
        if let displayPath {
            do { display = try DisplayServer(description: host.description, path: displayPath, logger: deviceLogger) } catch {
                server.stop()
                throw LifecycleError(.system, "cannot listen on \(displayPath): \(error.message)")
            }
        } else {
            display = nil
        }
        server.start()
        display?.start()
    }

    /// Stops serving and removes both sockets; the device goes with the instance.
    func shutdown() {
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
    }
}
