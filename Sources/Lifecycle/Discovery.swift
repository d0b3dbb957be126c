import Foundation
import MBochs
import PCI

/// Everything a management layer needs to configure a VM with a device
/// before any client connects: what DEVICE_GET_INFO, GET_REGION_INFO,
/// GET_IRQ_INFO and the plane PROBE will answer once one does.
public struct DeviceProfile: Codable, Equatable, Sendable {
    public struct RegionInfo: Codable, Equatable, Sendable {
        public var index: Int
        public var size: UInt64
        /// "read", "write", "mmap" as GET_REGION_INFO's flags say.
        public var flags: [String]
        /// VFIO_REGION_INFO_CAP_TYPE (type, subtype), when the region has one.
        public var type: UInt32?
        public var subtype: UInt32?
    }
    public struct IRQInfo: Codable, Equatable, Sendable {
        public var index: Int
        public var count: UInt32
        /// "eventfd", "maskable", "automasked", "noresize".
        public var flags: [String]
    }
    public struct Migration: Codable, Equatable, Sendable {
        public var model: String
        public var version: Int
        /// Oldest and newest state versions it reads.
        public var reads: [Int]
        public var parameters: [String: String]
    }

    public var deviceAPI = "vfio-pci"
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
    public var classCode: UInt32
    public var revision: UInt8
    public var reset: Bool
    public var regions: [RegionInfo]
    public var irqs: [IRQInfo]
    public var migration: Migration?
    public var display: DisplayInfo

    enum CodingKeys: String, CodingKey {
        case deviceAPI = "device_api", vendorID = "vendor_id", deviceID = "device_id"
        case subsystemVendorID = "subsystem_vendor_id", subsystemID = "subsystem_id"
        case classCode = "class_code", revision, reset, regions, irqs, migration, display
    }

    /// Reads it off a device model without a client.
    public init(device: VFIODevice) {
        var config = [UInt8](repeating: 0, count: 64)
        _ = config.withUnsafeMutableBytes { device.read(region: RegionIndex.config, offset: 0, into: $0) }
        func u16(_ o: Int) -> UInt16 { UInt16(config[o]) | UInt16(config[o + 1]) << 8 }
        typealias At = ConfigSpace.Offset
        vendorID = u16(At.vendorID); deviceID = u16(At.deviceID)
        subsystemVendorID = u16(At.subsystemVendorID); subsystemID = u16(At.subsystemID)
        classCode = UInt32(config[At.classCode]) << 16 | UInt32(config[At.subclass]) << 8 | UInt32(config[At.progIF])
        revision = config[At.revision]
        reset = device.supportsReset
        regions = device.regions.enumerated().map { i, r in
            var flags: [String] = []
            if r.readable { flags.append("read") }
            if r.writable { flags.append("write") }
            if r.mapping != nil { flags.append("mmap") }
            return RegionInfo(index: i, size: r.size, flags: flags, type: r.type?.type, subtype: r.type?.subtype)
        }
        irqs = device.irqs.enumerated().map { i, q in
            var flags = ["eventfd"]
            if q.maskable { flags.append("maskable") }
            if q.automasked { flags.append("automasked") }
            if q.noResize { flags.append("noresize") }
            return IRQInfo(index: i, count: q.count, flags: flags)
        }
        migration = device.migrationIdentity.map {
            Migration(model: $0.model, version: $0.version,
                      reads: [device.readableStateVersions.lowerBound, device.readableStateVersions.upperBound], parameters: $0.parameters)
        }
        if let d = device as? DisplayDevice {
            if let bochs = d as? MBochs {
                display = DisplayInfo(kind: "dmabuf", edid: true, maxWidth: Int(bochs.edidMax.width), maxHeight: Int(bochs.edidMax.height))
            } else {
                display = DisplayInfo(kind: d.planeKind == .region ? "region" : "dmabuf", edid: false)
            }
        } else {
            display = .none
        }
    }
}

/// A type as `umdev types --dumpjson` and the control socket describe it:
/// mdev's four attributes, then what umdev adds.
public struct TypeInfo: Codable, Equatable, Sendable {
    public var id: String
    public var availableInstances: Int
    public var deviceAPI: String
    public var name: String
    public var description: String?
    public var sample: Bool
    /// The budget it draws from: pool, what it counts, what one instance takes.
    public var pool: String
    public var unit: String
    public var cost: Int
    public var attributes: [AttributeInfo]
    public var device: DeviceProfile

    public struct AttributeInfo: Codable, Equatable, Sendable {
        public var name: String
        public var kind: AttributeSpec.Kind
        public var help: String
        public var defaultValue: String?
        enum CodingKeys: String, CodingKey { case name, kind, help, defaultValue = "default" }
    }

    enum CodingKeys: String, CodingKey {
        case id, availableInstances = "available_instances", deviceAPI = "device_api", name, description, sample
        case pool, unit, cost, attributes, device
    }
}

extension DeviceType {
    /// The description of an instance with default attributes, made once:
    /// building a device costs a few page-sized allocations and sparse memfds.
    public var prototype: DeviceProfile? { Prototypes.shared.description(of: self) }

    public func info(available: Int) -> TypeInfo? {
        guard let device = prototype else { return nil }
        return TypeInfo(id: id, availableInstances: available, deviceAPI: deviceAPI, name: name, description: description,
                        sample: sample, pool: pool.rawValue, unit: pool.unit, cost: cost,
                        attributes: attributes.map { .init(name: $0.name, kind: $0.kind, help: $0.help, defaultValue: $0.defaultValue) },
                        device: device)
    }
}

final class Prototypes: @unchecked Sendable {
    // @unchecked: `cache` is behind `lock`.
    static let shared = Prototypes()
    private let lock = NSLock()
    private var cache: [String: DeviceProfile] = [:]

    func description(of type: DeviceType) -> DeviceProfile? {
        lock.lock()
        defer { lock.unlock() }
        if let d = cache[type.id] { return d }
        guard let device = try? type.make(Attributes()) else { return nil }
        let d = DeviceProfile(device: device)
        cache[type.id] = d
        return d
    }
}
