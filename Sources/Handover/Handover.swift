import Glibc
import PCI

/// What a running umdev hands to the process that takes over from it
/// (Protocol/HANDOVER.md): one versioned wire format, read as hostile input.
///
/// Bytes: "UMDH", u16 version, u16 section count, then each section as
/// u16 type, u16 flags, u32 length and that many bytes. The descriptors go
/// beside the bytes (SCM_RIGHTS on the handover socket, or the service
/// manager's fd store), in order; sections name them by index. A reader
/// skips a section it does not know unless the writer marked it required,
/// and refuses a version it does not read before the old process lets go.
public struct Handover: Equatable, Sendable {
    public static let magic = "UMDH"
    /// 1: the first format.
    public static let version = 1
    /// The versions this build reads.
    public static let readableVersions = 1...version
    /// As many sections as the u16 count can say.
    public static let maxSections = Int(UInt16.max)

    public var sections: [Section]

    public init(sections: [Section] = []) { self.sections = sections }

    /// One typed section.
    public struct Section: Equatable, Sendable {
        public var type: UInt16
        /// The reader must understand it or refuse the handover.
        public var required: Bool
        public var payload: [UInt8]
        public init(type: UInt16, required: Bool, payload: [UInt8]) {
            self.type = type; self.required = required; self.payload = payload
        }
    }

    static let requiredFlag: UInt16 = 1

    /// The bytes to send, with the descriptors in the order the sections name them.
    public func encode() -> [UInt8] {
        precondition(sections.count <= Self.maxSections)
        var w = StateWriter(magic: Self.magic, version: Self.version)
        w.u16(UInt16(sections.count))
        for s in sections {
            w.u16(s.type); w.u16(s.required ? Self.requiredFlag : 0)
            w.u32(UInt32(s.payload.count)); w.raw(s.payload)
        }
        return w.bytes
    }

    /// Reads a handover that came with `descriptorCount` descriptors. Every
    /// length is checked, the section types this build knows are decoded
    /// and checked against `descriptorCount` (and no descriptor is named
    /// twice, so nothing can be adopted, and closed, twice), unknown
    /// optional sections are kept for the caller to ignore, unknown
    /// required ones refuse it.
    public static func decode(_ bytes: [UInt8], descriptorCount: Int) throws(DeviceError) -> Handover {
        var r = try StateReader(bytes, magic: magic, what: "handover", readable: readableVersions)
        let count = Int(try r.u16())
        var sections: [Section] = []
        var named = Set<Int>()
        for _ in 0..<count {
            let type = try r.u16(), flags = try r.u16(), length = Int(try r.u32())
            guard flags & ~requiredFlag == 0 else { throw DeviceError(EINVAL, "handover section \(type) has unknown flags \(flags)") }
            guard length <= r.remaining else { throw DeviceError(EINVAL, "handover section \(type) is longer than the handover") }
            let section = Section(type: type, required: flags & requiredFlag != 0, payload: try r.raw(length))
            switch SectionType(rawValue: type) {
            case .descriptor?:
                let index = try InventoryItem(section.payload, descriptorCount: descriptorCount).index
                guard named.insert(index).inserted else { throw DeviceError(EINVAL, "handover names descriptor \(index) twice") }
            case .writer?: _ = try Writer(section.payload)
            case .modelState?: _ = try ModelState(section.payload)
            case .device?: _ = try DeviceSection(section.payload, descriptorCount: descriptorCount)
            case .connection?: _ = try ConnectionSection(section.payload, descriptorCount: descriptorCount)
            case .daemon?: _ = try DaemonSection(section.payload, descriptorCount: descriptorCount)
            case .instance?: _ = try InstanceSection(section.payload)
            case .display?: _ = try DisplaySection(section.payload, descriptorCount: descriptorCount)
            case .host?: _ = try HostSection(section.payload, descriptorCount: descriptorCount)
            case .migration?: _ = try MigrationSection(section.payload)
            case nil:
                guard !section.required else {
                    throw DeviceError(EINVAL, "handover section \(type) is required and this umdev does not know it (a newer writer)")
                }
            }
            sections.append(section)
        }
        try r.finish()
        return Handover(sections: sections)
    }

    /// The sections of `type`, in order.
    public func sections(_ type: SectionType) -> [Section] { sections.filter { $0.type == type.rawValue } }
}

/// The section types of version 1.
public enum SectionType: UInt16, Sendable {
    /// Who wrote it: umdev's version and the writer's pid.
    case writer = 1
    /// One descriptor of the inventory: its index, role and name.
    case descriptor = 2
    /// A device's model state: its type and the model's own state stream.
    case modelState = 3
    /// A served device: its listener and the memory its regions hand out.
    case device = 4
    /// A device's attached client: socket, negotiated state, unhandled
    /// bytes, DMA windows, IRQ wiring.
    case connection = 5
    /// `umdev daemon` itself: its control socket, and the control
    /// connection that asked for the upgrade.
    case daemon = 6
    /// A daemon instance: UUID, type, attributes; its device's sections follow.
    case instance = 7
    /// A display device's display socket and the plane ids it handed out.
    case display = 8
    /// A device model's host resources: mtty's pty and socket lines.
    case host = 9
    /// A migration under way on a device with a client attached.
    case migration = 10
}

/// What a descriptor is for: how the new process knows what to do with it.
public enum DescriptorRole: UInt16, Sendable, CaseIterable {
    case deviceListener = 1
    case clientConnection = 2
    case dmaWindow = 3
    case irqTrigger = 4
    case irqMask = 5
    case irqUnmask = 6
    case regionMemory = 7
    case backendLine = 8
    case backendListener = 9
    case displayListener = 10
    case viewer = 11
    case controlListener = 12
    case stateMemory = 13
    case pendingMessageDescriptor = 14
    /// A control connection waiting for an answer (`umdev upgrade`'s).
    case controlConnection = 15
}

/// One descriptor of a device's inventory: which one (its index among the
/// descriptors that came with the handover), what it is for, and a name
/// (the instance and the part, as `FDNAME=` in the fd store).
public struct InventoryItem: Equatable, Sendable {
    public var index: Int
    /// Nil when a newer writer used a role this build does not know: the
    /// descriptor is closed and what needed it starts fresh.
    public var role: DescriptorRole?
    public var rawRole: UInt16
    public var name: String

    public init(index: Int, role: DescriptorRole, name: String) {
        self.index = index; self.role = role; rawRole = role.rawValue; self.name = name
    }

    public var section: Handover.Section {
        var w = StateWriter()
        w.u32(UInt32(index)); w.u16(rawRole); w.name(name)
        return Handover.Section(type: SectionType.descriptor.rawValue, required: false, payload: w.bytes)
    }

    public init(_ payload: [UInt8], descriptorCount: Int) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover descriptor section")
        let i = Int(try r.u32())
        guard i < descriptorCount else {
            throw DeviceError(EINVAL, "handover names descriptor \(i) but \(descriptorCount) came with it")
        }
        index = i
        rawRole = try r.u16()
        role = DescriptorRole(rawValue: rawRole)
        name = try r.name()
        try r.finish()
    }
}

/// Who wrote a handover, and when.
public struct Writer: Equatable, Sendable {
    public var version: String
    public var pid: Int32
    /// CLOCK_MONOTONIC (ns) when it was written: the same clock across exec,
    /// so the reader can say how long taking over took.
    public var writtenAt: UInt64
    public init(version: String, pid: Int32, writtenAt: UInt64 = 0) {
        self.version = version; self.pid = pid; self.writtenAt = writtenAt
    }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(version); w.u32(UInt32(bitPattern: pid)); w.u64(writtenAt)
        return Handover.Section(type: SectionType.writer.rawValue, required: false, payload: w.bytes)
    }

    public init(_ payload: [UInt8]) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover writer section")
        version = try r.name()
        pid = Int32(bitPattern: try r.u32())
        writtenAt = try r.u64()
        try r.finish()
    }
}

/// A device model's state: its type (as the catalog names it) and the
/// bytes its `saveState` wrote, in that model's own versioned format.
/// (Not VFIOUser's `DeviceState`, the migration state machine's states.)
public struct ModelState: Equatable, Sendable {
    public var type: String
    public var state: [UInt8]
    public init(type: String, state: [UInt8]) { self.type = type; self.state = state }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(type); w.u32(UInt32(state.count)); w.raw(state)
        return Handover.Section(type: SectionType.modelState.rawValue, required: true, payload: w.bytes)
    }

    public init(_ payload: [UInt8]) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover model state section")
        type = try r.name()
        let n = Int(try r.u32())
        state = try r.raw(n)
        try r.finish()
    }
}
