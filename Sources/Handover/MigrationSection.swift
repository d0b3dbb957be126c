import Glibc
import PCI
import VFIOUser
import VFIOUserServer

/// A migration under way on a device with a client attached: its state,
/// the outgoing stream and how far the client has read it, and what the
/// client has written of an incoming one. The client goes on reading or
/// writing where it was.
public struct MigrationSection: Equatable, Sendable {
    /// Which device of the handover ("" for `umdev serve`'s one).
    public var instance: String
    public var snapshot: MigrationSnapshot

    public init(instance: String, snapshot: MigrationSnapshot) { self.instance = instance; self.snapshot = snapshot }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(instance)
        w.u32(snapshot.state.rawValue)
        w.u32(UInt32(snapshot.outgoing.count)); w.raw(snapshot.outgoing)
        w.u32(UInt32(snapshot.readPosition))
        w.u32(UInt32(snapshot.incoming.count)); w.raw(snapshot.incoming)
        return Handover.Section(type: SectionType.migration.rawValue, required: true, payload: w.bytes)
    }

    public init(_ payload: [UInt8]) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover migration section")
        instance = try r.name()
        let raw = try r.u32()
        guard let state = DeviceState(rawValue: raw) else { throw DeviceError(EINVAL, "handover migration section: state \(raw)") }
        func stream(_ r: inout StateReader) throws(DeviceError) -> [UInt8] {
            let n = Int(try r.u32())
            guard n <= MigrationMachine.maxStream else { throw DeviceError(EINVAL, "handover migration section: a \(n)-byte stream") }
            return try r.raw(n)
        }
        let outgoing = try stream(&r)
        let position = Int(try r.u32())
        guard position <= outgoing.count else { throw DeviceError(EINVAL, "handover migration section: read position beyond the stream") }
        let incoming = try stream(&r)
        snapshot = MigrationSnapshot(state: state, outgoing: outgoing, readPosition: position, incoming: incoming)
        try r.finish()
    }
}
