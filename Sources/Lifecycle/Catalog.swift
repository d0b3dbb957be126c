import Foundation
import MBochs
import MDPY
import MTTY
import PCI
import TestDevice

/// A shared resource instances of several types draw from, as the sample
/// parents account them: mtty counts ports, mdpy instances, mbochs MiB of
/// VRAM. Committed when an instance is created, returned when it stops.
public enum Pool: String, Codable, CaseIterable, Sendable {
    case mtty, mdpy, mbochs, test

    /// What the pool counts.
    public var unit: String {
        switch self {
        case .mtty: "ports"
        case .mdpy, .test: "instances"
        case .mbochs: "MiB of VRAM"
        }
    }

    /// The samples' defaults: 24 mtty ports, 4 mdpy devices, 256 MB for mbochs.
    public var defaultCapacity: Int {
        switch self {
        case .mtty: 24
        case .mdpy: 4
        case .mbochs: 256
        case .test: 16
        }
    }
}

/// An attribute of an instance: a creation parameter (fixed once the
/// instance exists), a runtime setting (get and set), or a status (get only).
public struct AttributeSpec: Sendable {
    public enum Kind: String, Codable, Sendable { case creation, runtime, status }
    public let name: String
    public let kind: Kind
    public let help: String
    /// The value an instance created without it has (creation attributes).
    public let defaultValue: String?
    /// nil when `value` is acceptable, else why not.
    let check: @Sendable (String) -> String?

    public func problem(with value: String) -> String? { check(value) }
}

/// What a type shows: nothing, a region plane or a dmabuf plane, with or without an EDID.
public struct DisplayInfo: Codable, Equatable, Sendable {
    /// "none", "region" or "dmabuf".
    public var kind: String
    public var edid: Bool
    /// The EDID's maximum (0 = no limit); absent without an EDID.
    public var maxWidth: Int?
    public var maxHeight: Int?

    enum CodingKeys: String, CodingKey { case kind, edid, maxWidth = "max_width", maxHeight = "max_height" }

    public init(kind: String, edid: Bool, maxWidth: Int? = nil, maxHeight: Int? = nil) {
        self.kind = kind; self.edid = edid; self.maxWidth = maxWidth; self.maxHeight = maxHeight
    }

    public static let none = DisplayInfo(kind: "none", edid: false)
}

/// Creation and runtime attributes an instance was given, in order (as
/// mdevctl's `attrs`); later values of a name win.
public struct Attributes: Sendable, Equatable, Codable {
    public var list: [(name: String, value: String)]

    public init(_ list: [(name: String, value: String)] = []) { self.list = list }

    public subscript(name: String) -> String? { list.last { $0.name == name }?.value }

    public static func == (a: Attributes, b: Attributes) -> Bool {
        a.list.map { [$0.name, $0.value] } == b.list.map { [$0.name, $0.value] }
    }

    /// mdevctl's shape: `[{"name": "value"}, …]`.
    public init(from decoder: Decoder) throws {
        let items = try decoder.singleValueContainer().decode([[String: String]].self)
        list = try items.map { item in
            guard item.count == 1, let (k, v) = item.first else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "an attribute is an object with one member"))
            }
            return (k, v)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(list.map { [$0.name: $0.value] })
    }
}

/// A device type the daemon can create, as mdev lists them.
public struct DeviceType: Sendable {
    /// The type id, e.g. "mtty-2" (the sysfs directory name in mdev).
    public let id: String
    /// mdev's `name` attribute.
    public let name: String
    /// mdev's `description` attribute; the mtty sample has none.
    public let description: String?
    public let deviceAPI = "vfio-pci"
    /// A kernel sample's type (false for umdev's protocol test devices).
    public let sample: Bool
    public let pool: Pool
    /// How much of its pool one instance takes.
    public let cost: Int
    /// The state versions this umdev reads, the newest being what it writes:
    /// the model's own.
    public let stateVersions: ClosedRange<Int>
    public let display: DisplayInfo
    public let attributes: [AttributeSpec]
    let factory: @Sendable (Attributes) throws(DeviceError) -> VFIODevice
    /// The model's identity for an instance with these attributes: asked of
    /// the model, never restated here, so compat and a resume cannot disagree.
    let modelIdentity: @Sendable (Attributes) -> MigrationIdentity

    /// A device of this type with `attributes` (defaults for those absent).
    public func make(_ attributes: Attributes) throws(DeviceError) -> VFIODevice { try factory(attributes) }

    /// The migration identity an instance created with `attributes` has.
    public func identity(_ attributes: Attributes) -> MigrationIdentity { modelIdentity(attributes) }

    /// The migration model, e.g. "umdev.mtty".
    public var model: String { modelIdentity(Attributes()).model }

    public func attribute(_ name: String) -> AttributeSpec? { attributes.first { $0.name == name } }
}

/// Every type umdev serves.
public enum Catalog {
    public static func type(_ id: String) -> DeviceType? { all.first { $0.id == id } }

    public static let all: [DeviceType] = testTypes + mttyTypes + mdpyTypes + mbochsTypes

    // MARK: Attributes

    static let label = AttributeSpec(name: "label", kind: .runtime, help: "free text to tell instances apart", defaultValue: nil) {
        $0.utf8.count <= 256 && !$0.contains("\n") ? nil : "a label is one line of at most 256 bytes"
    }
    static let status: [AttributeSpec] = [
        AttributeSpec(name: "state", kind: .status, help: "running, or attached (a client holds the device)", defaultValue: nil) { _ in nil },
        AttributeSpec(name: "socket", kind: .status, help: "the device socket", defaultValue: nil) { _ in nil },
        AttributeSpec(name: "client_pid", kind: .status, help: "the attached client's process id", defaultValue: nil) { _ in nil },
    ]
    static let displaySocket = AttributeSpec(name: "display_socket", kind: .creation,
                                             help: "where viewers attach: a path, or none (default: RUN-DIR/UUID.display)", defaultValue: nil) {
        $0 == "none" || ($0.hasPrefix("/") && $0.utf8.count < 100) ? nil : "an absolute path (under 100 bytes) or none"
    }
    static let pollUs = AttributeSpec(name: "poll_us", kind: .creation,
                                      help: "spin on the connection up to N µs for the next request before blocking (0: off)",
                                      defaultValue: "0") {
        guard let n = Int($0), (0...1_000_000).contains(n) else { return "0 to 1000000 microseconds" }
        return nil
    }
    static let plane = AttributeSpec(name: "plane", kind: .status, help: "what the guest shows now", defaultValue: nil) { _ in nil }

    static func portHost(_ n: Int) -> AttributeSpec {
        AttributeSpec(name: "port\(n)_host", kind: .status, help: "where port \(n)'s host end is: the pty, the socket, or loopback",
                      defaultValue: nil) { _ in nil }
    }

    static func port(_ n: Int) -> AttributeSpec {
        AttributeSpec(name: "port\(n)", kind: .creation, help: "port \(n)'s line: loopback (as the sample), pty, or unix:PATH",
                      defaultValue: "loopback") { SerialBackend(argument: $0) == nil ? "loopback, pty or unix:PATH" : nil }
    }

    /// "WxH" as two numbers.
    static func resolution(_ s: String) -> (UInt32, UInt32)? {
        let parts = s.split(separator: "x")
        guard parts.count == 2, let w = UInt32(parts[0]), let h = UInt32(parts[1]), w <= 16000, h <= 12000 else { return nil }
        return (w, h)
    }

    // MARK: Types

    static let testTypes: [DeviceType] = [true, false].map { mappable in
        DeviceType(id: mappable ? "test" : "test-nommap", name: mappable ? "test" : "test-nommap",
                   description: mappable ? "Protocol test device (BAR0 trapped MMIO, BAR1 mmap-able memfd, BAR2 I/O, INTx/MSI/MSI-X)"
                                         : "Protocol test device with every BAR trapped (QEMU posts MMIO writes to it)",
                   sample: false, pool: .test, cost: 1, stateVersions: TestDevice.readableStateVersions, display: .none,
                   attributes: [pollUs, label] + status,
                   factory: { (_) throws(DeviceError) in try TestDevice(mappable: mappable) },
                   modelIdentity: { _ in TestDevice.migrationIdentity(mappable: mappable) })
    }

    static let mttyTypes: [DeviceType] = [1, 2].map { ports in
        DeviceType(id: "mtty-\(ports)", name: ports == 1 ? "Single port serial" : "Dual port serial", description: nil,
                   sample: true, pool: .mtty, cost: ports, stateVersions: MTTY.readableStateVersions, display: .none,
                   attributes: (0..<ports).map(port) + [pollUs, label] + status + (0..<ports).map(portHost),
                   factory: { (attrs) throws(DeviceError) in
                       let backends = (0..<ports).map { SerialBackend(argument: attrs["port\($0)"] ?? "loopback") ?? .loopback }
                       return try MTTY(ports: ports, backends: backends)
                   },
                   modelIdentity: { _ in MTTY.migrationIdentity(ports: ports) })
    }

    static let mdpyTypes: [DeviceType] = MDPYType.all.map { t in
        DeviceType(id: t.name, name: t.name, description: t.description, sample: true, pool: .mdpy, cost: 1,
                   stateVersions: MDPY.readableStateVersions, display: DisplayInfo(kind: "region", edid: false),
                   attributes: [displaySocket, pollUs, label] + status + [plane],
                   factory: { (_) throws(DeviceError) in try MDPY(type: t) },
                   modelIdentity: { _ in MDPY.migrationIdentity(type: t) })
    }

    static let mbochsTypes: [DeviceType] = MBochsType.all.map { t in
        let edidMax = AttributeSpec(name: "edid_max", kind: .creation, help: "the largest mode the EDID offers, WxH (0x0: no limit)",
                                    defaultValue: "\(t.maxWidth)x\(t.maxHeight)") {
            guard let (w, h) = resolution($0) else { return "WIDTHxHEIGHT, e.g. 1280x1024" }
            return (w == 0) == (h == 0) && (w == 0 || (w >= 64 && h >= 64)) ? nil : "both 0, or both at least 64"
        }
        let preferred = AttributeSpec(name: "edid_resolution", kind: .runtime,
                                      help: "the mode the EDID prefers, WxH: set it as a host does when its window changes size",
                                      defaultValue: nil) { resolution($0) == nil ? "WIDTHxHEIGHT, e.g. 1280x1024" : nil }
        @Sendable func limit(_ attrs: Attributes) -> (width: UInt32, height: UInt32) {
            attrs["edid_max"].flatMap(resolution).map { (width: $0.0, height: $0.1) } ?? (t.maxWidth, t.maxHeight)
        }
        return DeviceType(id: t.name, name: t.name, description: t.description, sample: true, pool: .mbochs, cost: t.vramMiB,
                          stateVersions: MBochs.readableStateVersions,
                          display: DisplayInfo(kind: "dmabuf", edid: true, maxWidth: Int(t.maxWidth), maxHeight: Int(t.maxHeight)),
                          attributes: [displaySocket, edidMax, preferred, pollUs, label] + status + [plane],
                          factory: { (attrs) throws(DeviceError) in try MBochs(type: t, edidMax: limit(attrs)) },
                          modelIdentity: { attrs in MBochs.migrationIdentity(type: t, edidMax: limit(attrs)) })
    }
}
