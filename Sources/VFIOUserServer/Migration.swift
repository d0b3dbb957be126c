import Glibc
import PCI
import VFIOUser

/// The migration v2 device-state machine (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
/// and the data stream MIG_DATA_READ / MIG_DATA_WRITE carry.
///
/// umdev offers STOP_COPY and PRE_COPY (no P2P states). The stream is an
/// envelope around the device model's own versioned state:
///
///     "UMDVMIG1"  8 bytes magic and envelope version
///     u16 type-name length, type-name bytes (the device type, e.g. "mtty-2")
///     u32 state length, state bytes (the model's own format)
///
/// PRE_COPY hands out the magic and type name; STOP_COPY adds the state.
public struct MigrationMachine {
    public static let magic: [UInt8] = Array("UMDVMIG1".utf8)
    /// Cap on a resuming stream, so a client cannot make us buffer without end.
    public static let maxStream = 64 << 20

    public private(set) var state: DeviceState = .running
    var outgoing: [UInt8] = []
    var readPosition = 0
    var incoming: [UInt8] = []

    /// Arcs the kernel defines (vfio_mig_get_next_state) without the P2P states.
    static let arcs: [DeviceState: [DeviceState]] = [
        .running: [.stop, .preCopy],
        .stop: [.running, .stopCopy, .resuming],
        .stopCopy: [.stop],
        .resuming: [.stop],
        .preCopy: [.running, .stopCopy],
    ]

    /// The states a multi-step change may pass through.
    static let intermediate: Set<DeviceState> = [.running, .stop]

    /// The sequence of arcs from `from` to `to`, or nil when the change is not allowed.
    static func path(from: DeviceState, to: DeviceState) -> [DeviceState]? {
        if from == to { return [] }
        guard arcs[to] != nil, arcs[from] != nil else { return nil }
        // A saving or resuming state can't reach PRE_COPY (the kernel's table says ERROR).
        if to == .preCopy && (from == .stopCopy || from == .resuming) { return nil }
        var previous: [DeviceState: DeviceState] = [:]
        var queue = [from]
        var seen: Set<DeviceState> = [from]
        while !queue.isEmpty {
            let s = queue.removeFirst()
            for next in arcs[s] ?? [] where !seen.contains(next) {
                seen.insert(next)
                previous[next] = s
                if next == to {
                    var path = [to]
                    var cur = to
                    while let p = previous[cur], p != from { path.insert(p, at: 0); cur = p }
                    return path
                }
                if intermediate.contains(next) { queue.append(next) }
            }
        }
        return nil
    }

    /// Moves to `target`, running each arc's action against `device`.
    mutating func transition(to target: DeviceState, device: VFIODevice, typeName: String) throws(ProtocolError) {
        guard let steps = MigrationMachine.path(from: state, to: target) else {
            throw .invalid("migration state change not allowed")
        }
        for next in steps {
            switch (state, next) {
            case (.running, .stop), (.preCopy, .stopCopy):
                device.setRunning(false)
            case (.stop, .running), (.preCopy, .running):
                device.setRunning(true)
            default: break
            }
            switch next {
            case .preCopy:
                outgoing = MigrationMachine.preamble(typeName)
                readPosition = 0
            case .stopCopy:
                if state != .preCopy { outgoing = MigrationMachine.preamble(typeName); readPosition = 0 }
                let body = device.saveState()
                appendU32(&outgoing, UInt32(body.count))
                outgoing += body
            case .resuming:
                incoming = []
            case .stop where state == .resuming:
                let stream = incoming
                incoming = []
                let body = try MigrationMachine.unwrap(stream, typeName: typeName)
                do { try device.restoreState(body) } catch {
                    throw ProtocolError(EINVAL, "device refused the migration state")
                }
            case .stop, .running:
                outgoing = []
                readPosition = 0
            default: break
            }
            state = next
        }
    }

    /// Resets to RUNNING and drops both streams (DEVICE_RESET).
    mutating func reset() {
        state = .running
        outgoing = []
        incoming = []
        readPosition = 0
    }

    static func preamble(_ typeName: String) -> [UInt8] {
        var out = magic
        let name = Array(typeName.utf8)
        out.append(UInt8(name.count & 0xff)); out.append(UInt8(name.count >> 8))
        return out + name
    }

    /// Checks the envelope and returns the device state inside it.
    static func unwrap(_ s: [UInt8], typeName: String) throws(ProtocolError) -> [UInt8] {
        guard s.count >= magic.count + 2, Array(s[0..<magic.count]) == magic else {
            throw .invalid("migration stream has no umdev header or an unknown format version")
        }
        let nameLength = Int(s[8]) | Int(s[9]) << 8
        guard s.count >= 10 + nameLength + 4 else { throw .invalid("migration stream truncated") }
        let name = String(decoding: s[10..<(10 + nameLength)], as: UTF8.self)
        guard name == typeName else { throw .invalid("migration stream is for another device type") }
        var p = 10 + nameLength
        let length = Int(s[p]) | Int(s[p + 1]) << 8 | Int(s[p + 2]) << 16 | Int(s[p + 3]) << 24
        p += 4
        guard s.count == p + length else { throw .invalid("migration stream length mismatch") }
        return Array(s[p...])
    }

    /// Next chunk of the outgoing stream (MIG_DATA_READ); shorter than asked at the end.
    mutating func read(max: Int) throws(ProtocolError) -> ArraySlice<UInt8> {
        guard state == .preCopy || state == .stopCopy else { throw .invalid("MIG_DATA_READ outside PRE_COPY/STOP_COPY") }
        let n = min(max, outgoing.count - readPosition)
        defer { readPosition += n }
        return outgoing[readPosition..<(readPosition + n)]
    }

    /// Appends to the incoming stream (MIG_DATA_WRITE).
    mutating func write(_ data: UnsafeRawBufferPointer) throws(ProtocolError) {
        guard state == .resuming else { throw .invalid("MIG_DATA_WRITE outside RESUMING") }
        guard incoming.count + data.count <= MigrationMachine.maxStream else { throw ProtocolError(EFBIG, "migration stream too large") }
        incoming.append(contentsOf: data)
    }

    /// Bytes of the outgoing stream not yet read.
    var pendingBytes: Int { outgoing.count - readPosition }
}

@inline(__always) func appendU32(_ a: inout [UInt8], _ v: UInt32) {
    for i in 0..<4 { a.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
}
