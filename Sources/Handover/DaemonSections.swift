import Glibc
import PCI

// The sections that carry `umdev daemon` itself: its control socket and
// the control connection waiting to hear how an upgrade went
// (`DaemonSection`), and what the daemon knows of each instance beyond
// the device (`InstanceSection`): its UUID, type and attributes. Each
// instance's device, model-state and connection sections follow it,
// named by the UUID.

private let none = UInt32.max

/// The daemon's own descriptors.
public struct DaemonSection: Equatable, Sendable {
    /// The listening control socket's index.
    public var controlListener: UInt32
    /// Whether the control socket's file is the daemon's to remove on stop
    /// (false when socket activation made it).
    public var ownsControlFile: Bool
    /// The control connection that asked for the upgrade (`umdev upgrade`),
    /// which the new process answers; nil for SIGUSR2.
    public var requester: UInt32?

    public init(controlListener: UInt32, ownsControlFile: Bool, requester: UInt32?) {
        self.controlListener = controlListener; self.ownsControlFile = ownsControlFile; self.requester = requester
    }

    public var section: Handover.Section {
        var w = StateWriter()
        w.u32(controlListener); w.u8(ownsControlFile ? 1 : 0); w.u32(requester ?? none)
        return Handover.Section(type: SectionType.daemon.rawValue, required: true, payload: w.bytes)
    }

    public init(_ payload: [UInt8], descriptorCount: Int) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover daemon section")
        controlListener = try index(try r.u32(), descriptorCount, "the control socket")
        switch try r.u8() {
        case 0: ownsControlFile = false
        case 1: ownsControlFile = true
        case let v: throw DeviceError(EINVAL, "handover daemon section: owns-control-file is \(v), not 0 or 1")
        }
        let q = try r.u32()
        requester = q == none ? nil : try index(q, descriptorCount, "the upgrade's requester")
        try r.finish()
    }
}

/// One daemon instance as the daemon knows it.
public struct InstanceSection: Equatable, Sendable {
    /// A name and its value, as an attribute list holds them.
    public struct Pair: Equatable, Sendable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) { self.name = name; self.value = value }
    }

    /// Its UUID, canonical: also the instance name of its device sections.
    public var uuid: String
    /// Its type, as the catalog names it.
    public var type: String
    /// The attributes it was created with, in order.
    public var given: [Pair]
    /// The runtime attributes set since.
    public var runtime: [Pair]

    /// More than any type has attributes; a longer list is refused.
    public static let maxAttributes = 256
    /// Longer than any attribute's name or value may be.
    public static let maxText = 4096

    public init(uuid: String, type: String, given: [Pair], runtime: [Pair]) {
        self.uuid = uuid; self.type = type; self.given = given; self.runtime = runtime
    }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(uuid); w.name(type)
        for list in [given, runtime] {
            w.u16(UInt16(min(list.count, Self.maxAttributes)))
            for p in list.prefix(Self.maxAttributes) { text(&w, p.name); text(&w, p.value) }
        }
        return Handover.Section(type: SectionType.instance.rawValue, required: true, payload: w.bytes)
    }

    public init(_ payload: [UInt8]) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover instance section")
        uuid = try r.name()
        guard !uuid.isEmpty else { throw DeviceError(EINVAL, "handover instance section: no UUID") }
        type = try r.name()
        var lists: [[Pair]] = []
        for _ in 0..<2 {
            let n = Int(try r.u16())
            guard n <= Self.maxAttributes else { throw DeviceError(EINVAL, "handover instance section: \(n) attributes") }
            var list: [Pair] = []
            for _ in 0..<n { list.append(Pair(try readText(&r), try readText(&r))) }
            lists.append(list)
        }
        given = lists[0]
        runtime = lists[1]
        try r.finish()
    }
}

/// Text: a u16 length and that much UTF-8, at most `InstanceSection.maxText` bytes.
private func text(_ w: inout StateWriter, _ s: String) {
    var utf8: [UInt8] = []
    for c in s where utf8.count + c.utf8.count <= InstanceSection.maxText { utf8 += c.utf8 }
    w.u16(UInt16(utf8.count)); w.raw(utf8)
}

private func readText(_ r: inout StateReader) throws(DeviceError) -> String {
    let n = Int(try r.u16())
    guard n <= InstanceSection.maxText else { throw DeviceError(EINVAL, "handover instance section: a \(n)-byte attribute") }
    guard let s = String(validating: try r.raw(n), as: UTF8.self) else {
        throw DeviceError(EINVAL, "handover instance section: an attribute that is not UTF-8")
    }
    return s
}

private func index(_ i: UInt32, _ count: Int, _ what: String) throws(DeviceError) -> UInt32 {
    guard Int(i) < count else { throw DeviceError(EINVAL, "handover names descriptor \(i) for \(what) but \(count) came with it") }
    return i
}
