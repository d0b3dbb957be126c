import Foundation

/// What a management layer learns about a vfio-user backend before it runs
/// one: the spec's "Backend Program Conventions" (a JSON file under
/// `share/vfio-user`, as vhost-user backends ship theirs under
/// `share/qemu/vhost-user`) and `--print-capabilities`. The spec leaves the
/// schema open; ours is in Protocol/BACKEND.md and
/// Protocol/vfio-user-backend.schema.json.
public struct BackendDescription: Codable, Equatable, Sendable {
    /// One line for a person choosing a backend.
    public var description: String
    /// The bus the device sits on; always "pci" for umdev.
    public var type: String
    /// The program to run, an absolute path once installed.
    public var binary: String
    /// Arguments before `--socket-path=PATH` or `--fd=FDNUM`: one binary
    /// serves every type, so the type is an argument.
    public var arguments: [String]
    /// Free-form labels, as in vhost-user.json.
    public var tags: [String]
    public var features: [String]
    public var device: Device

    /// The device as a guest and a VMM see it, without starting it.
    public struct Device: Codable, Equatable, Sendable {
        public var deviceAPI: String
        public var vendorID: UInt16
        public var deviceID: UInt16
        public var subsystemVendorID: UInt16
        public var subsystemID: UInt16
        public var classCode: UInt32
        /// "none", "region" (the plane is a region) or "dmabuf".
        public var display: String
        public var migration: DeviceProfile.Migration?

        enum CodingKeys: String, CodingKey {
            case deviceAPI = "device_api", vendorID = "vendor_id", deviceID = "device_id"
            case subsystemVendorID = "subsystem_vendor_id", subsystemID = "subsystem_id", classCode = "class_code"
            case display, migration
        }
    }

    /// What `--print-capabilities` prints: vhost-user's shape (`type`,
    /// `features`) and the device.
    public struct Capabilities: Codable, Equatable, Sendable {
        public var type: String
        public var features: [String]
        public var device: Device
    }

    public init?(type: DeviceType, binary: String) {
        guard let profile = type.prototype else { return nil }
        let what = type.description.map { "\(type.name): \($0)" } ?? type.name
        description = "umdev \(type.id): \(what)" + (type.sample ? " (the Linux \(type.model.split(separator: ".").last ?? "") sample)" : " (a protocol test device)")
        self.type = "pci"
        self.binary = binary
        arguments = ["serve", "--type", type.id]
        tags = ["umdev", type.sample ? "mdev-sample" : "test-device", "pool:\(type.pool.rawValue)"]
        var features: [String] = []
        if profile.reset { features.append("reset") }
        if profile.migration != nil { features.append("migration") }
        if profile.regions.contains(where: { $0.flags.contains("mmap") }) { features.append("mmap") }
        if profile.irqs.indices.contains(1), profile.irqs[1].count > 0 { features.append("msi") }
        if profile.irqs.indices.contains(2), profile.irqs[2].count > 0 { features.append("msix") }
        if profile.display.kind != "none" { features.append("display-\(profile.display.kind)") }
        if profile.display.edid { features.append("edid") }
        self.features = features
        device = Device(deviceAPI: profile.deviceAPI, vendorID: profile.vendorID, deviceID: profile.deviceID,
                        subsystemVendorID: profile.subsystemVendorID, subsystemID: profile.subsystemID,
                        classCode: profile.classCode, display: profile.display.kind, migration: profile.migration)
    }

    public var capabilities: Capabilities { Capabilities(type: type, features: features, device: device) }

    /// The file name under share/vfio-user: a priority, then the type, as
    /// vhost-user's files are ordered (lower numbers first).
    public var fileName: String { "50-umdev-\(arguments[2]).json" }

    /// Pretty JSON with sorted keys and a final newline: stable for packagers' diffs.
    public static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // Encoding plain structs of strings and integers cannot fail.
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
