/// What a device's migration state is, so compatibility is decided before
/// any data moves: the device model, the version of its state format, the
/// type, and the creation parameters that shape what a guest sees (port
/// count, resolution, VRAM size). Host-side choices (a port's pty or
/// socket, a display socket's path) are not among them: they do not move
/// with the guest.
public struct MigrationIdentity: Codable, Equatable, Sendable, CustomStringConvertible {
    /// The device model, e.g. "umdev.mtty"; streams never cross models.
    public var model: String
    /// The version of the state format the stream carries.
    public var version: Int
    /// The device type it was saved from, e.g. "mtty-2".
    public var type: String
    /// Creation parameters that must match, e.g. ["ports": "2"].
    public var parameters: [String: String]

    public init(model: String, version: Int, type: String, parameters: [String: String] = [:]) {
        self.model = model; self.version = version; self.type = type; self.parameters = parameters
    }

    public var description: String {
        let p = parameters.keys.sorted().map { "\($0)=\(parameters[$0]!)" }.joined(separator: ",")
        return "\(type) (\(model) v\(version)\(p.isEmpty ? "" : ", " + p))"
    }

    /// Whether a device that is `self` and reads state versions `readable`
    /// can take state saved as `source`; nil when it can, else the reason.
    /// The same answer decides `umdev compat` and a resume.
    public func refusal(of source: MigrationIdentity, readable: ClosedRange<Int>) -> String? {
        if source.model != model {
            return "other device model: the state is \(source.model) (\(source.type)), this device is \(model) (\(type))"
        }
        if source.version > readable.upperBound {
            return "state version \(source.version) is newer than the newest this umdev reads (\(readable.upperBound))"
        }
        if source.version < readable.lowerBound {
            return "state version \(source.version) is older than the oldest this umdev reads (\(readable.lowerBound))"
        }
        for key in Set(parameters.keys).union(source.parameters.keys).sorted() where source.parameters[key] != parameters[key] {
            return "\(key) differs: the state has \(source.parameters[key] ?? "none"), this device \(parameters[key] ?? "none")"
        }
        if source.type != type { return "other device type: the state is \(source.type), this device is \(type)" }
        return nil
    }
}
