import Glibc
import PCI

/// A device model's host resources (mtty's pty and socket lines): for each,
/// its key, its descriptors by role, and the model's bytes for it. The
/// model that claims one checks the descriptors are what they say.
public struct HostSection: Equatable, Sendable {
    /// A descriptor by its role to the model and its index in the handover's list.
    public struct Descriptor: Equatable, Sendable {
        public var role: String
        public var index: UInt32
        public init(_ role: String, _ index: UInt32) { self.role = role; self.index = index }
    }

    public struct Entry: Equatable, Sendable {
        public var key: String
        public var descriptors: [Descriptor]
        public var data: [UInt8]

        public init(key: String, descriptors: [Descriptor], data: [UInt8]) {
            self.key = key; self.descriptors = descriptors; self.data = data
        }
    }

    /// Which device of the handover ("" for `umdev serve`'s one).
    public var instance: String
    public var entries: [Entry]

    /// More than a model has lines, descriptors per line, or bytes per line.
    public static let maxEntries = 16, maxDescriptors = 4, maxData = 128 << 10

    public init(instance: String, entries: [Entry]) { self.instance = instance; self.entries = entries }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(instance)
        w.u8(UInt8(entries.count))
        for e in entries {
            w.name(e.key)
            w.u8(UInt8(e.descriptors.count))
            for d in e.descriptors { w.name(d.role); w.u32(d.index) }
            w.u32(UInt32(e.data.count)); w.raw(e.data)
        }
        return Handover.Section(type: SectionType.host.rawValue, required: true, payload: w.bytes)
    }

    public init(_ payload: [UInt8], descriptorCount: Int) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover host section")
        instance = try r.name()
        let n = Int(try r.u8())
        guard n <= Self.maxEntries else { throw DeviceError(EINVAL, "handover host section: \(n) entries") }
        var list: [Entry] = []
        for _ in 0..<n {
            let key = try r.name()
            guard !key.isEmpty, !list.contains(where: { $0.key == key }) else { throw DeviceError(EINVAL, "handover host section: an empty or repeated key") }
            let m = Int(try r.u8())
            guard m <= Self.maxDescriptors else { throw DeviceError(EINVAL, "handover host section: \(m) descriptors for \(key.prefix(64))") }
            var descriptors: [Descriptor] = []
            for _ in 0..<m {
                let role = try r.name()
                let index = try r.u32()
                guard Int(index) < descriptorCount else {
                    throw DeviceError(EINVAL, "handover names descriptor \(index) for \(key.prefix(64)) but \(descriptorCount) came with it")
                }
                descriptors.append(Descriptor(role, index))
            }
            let length = Int(try r.u32())
            guard length <= Self.maxData else { throw DeviceError(EINVAL, "handover host section: \(length) bytes for \(key.prefix(64))") }
            list.append(Entry(key: key, descriptors: descriptors, data: try r.raw(length)))
        }
        entries = list
        try r.finish()
    }
}
