import Glibc
import PCI
import VFIOUser

/// The migration v2 device-state machine (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
/// and the data stream MIG_DATA_READ / MIG_DATA_WRITE carry.
///
/// umdev offers STOP_COPY and PRE_COPY (no P2P states). The stream is an
/// envelope around the device model's own versioned state:
///
///     "UMDVMIG2"  8 bytes magic and envelope version
///     u32 identity length, identity: JSON {"model", "version", "type", "parameters"}
///     u32 state length, state bytes (the model's own format)
///
/// PRE_COPY hands out the magic and identity; STOP_COPY adds the state. A
/// resume checks the identity against the device (`MigrationIdentity.refusal`)
/// before the state is touched: the same rule `umdev compat` applies.
public struct MigrationMachine {
    public static let magic: [UInt8] = Array("UMDVMIG2".utf8)
    /// Cap on a resuming stream, so a client cannot make us buffer without
    /// end: room for 64 MiB of VRAM and its headers.
    public static let maxStream = 80 << 20

    public private(set) var state: DeviceState = .running
    var outgoing: [UInt8] = []
    var readPosition = 0
    var incoming: [UInt8] = []
    /// Why the last resume was refused, for the log and the control socket.
    public private(set) var lastRefusal: String?

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
    mutating func transition(to target: DeviceState, device: VFIODevice) throws(ProtocolError) {
        guard let identity = device.migrationIdentity else { throw ProtocolError(ENOTTY, "device does not support migration") }
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
                outgoing = MigrationMachine.preamble(identity)
                readPosition = 0
            case .stopCopy:
                if state != .preCopy { outgoing = MigrationMachine.preamble(identity); readPosition = 0 }
                let body = device.saveState()
                appendU32(&outgoing, UInt32(body.count))
                outgoing += body
            case .resuming:
                incoming = []
            case .stop where state == .resuming:
                let stream = incoming
                incoming = []
                lastRefusal = nil
                do throws(DeviceError) {
                    let (source, body) = try MigrationMachine.unwrap(stream)
                    if let why = identity.refusal(of: source, readable: device.readableStateVersions) {
                        throw DeviceError(EINVAL, why)
                    }
                    try device.restoreState(body, version: source.version)
                } catch {
                    lastRefusal = error.message
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

    /// The magic and the identity: the head of every stream.
    public static func preamble(_ identity: MigrationIdentity) -> [UInt8] {
        var parameters: [(String, JSONValue)] = []
        for key in identity.parameters.keys.sorted() { parameters.append((key, .string(identity.parameters[key]!))) }
        let json = JSONValue.object([
            ("model", .string(identity.model)), ("version", .integer(Int64(identity.version))),
            ("type", .string(identity.type)), ("parameters", .object(parameters)),
        ]).serialized
        var out = magic
        appendU32(&out, UInt32(json.utf8.count))
        return out + Array(json.utf8)
    }

    /// Splits a whole stream into its identity and the device state.
    public static func unwrap(_ s: [UInt8]) throws(DeviceError) -> (MigrationIdentity, [UInt8]) {
        let (identity, at) = try header(s)
        guard s.count >= at + 4 else { throw DeviceError(EINVAL, "migration stream truncated before the device state") }
        let length = Int(u32(s, at))
        guard s.count == at + 4 + length else { throw DeviceError(EINVAL, "migration stream length does not match its header") }
        return (identity, Array(s[(at + 4)...]))
    }

    /// The identity at the head of a stream, and where the state's length follows.
    public static func header(_ s: [UInt8]) throws(DeviceError) -> (MigrationIdentity, Int) {
        guard s.count >= magic.count + 4, Array(s[0..<magic.count]) == magic else {
            throw DeviceError(EINVAL, "not a umdev migration stream, or one of another envelope version")
        }
        let length = Int(u32(s, magic.count))
        let start = magic.count + 4
        guard length <= 64 << 10, s.count >= start + length else { throw DeviceError(EINVAL, "migration stream identity truncated") }
        let text = Array(s[start..<(start + length)])
        let doc: JSONValue
        do { doc = try JSONParser.parse(text) } catch {
            throw DeviceError(EINVAL, "migration stream identity is not JSON")
        }
        guard case .string(let model)? = doc["model"], case .integer(let version)? = doc["version"],
              case .string(let type)? = doc["type"], case .object(let members)? = doc["parameters"],
              version >= 0, version <= Int64(Int32.max) else {
            throw DeviceError(EINVAL, "migration stream identity lacks model, version, type or parameters")
        }
        var parameters: [String: String] = [:]
        for (key, value) in members {
            guard case .string(let v) = value else { throw DeviceError(EINVAL, "migration stream parameter is not a string") }
            parameters[key] = v
        }
        return (MigrationIdentity(model: model, version: Int(version), type: type, parameters: parameters), start + length)
    }

    private static func u32(_ s: [UInt8], _ at: Int) -> UInt32 {
        UInt32(s[at]) | UInt32(s[at + 1]) << 8 | UInt32(s[at + 2]) << 16 | UInt32(s[at + 3]) << 24
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

    /// Takes a previous process's machine as it was (a live upgrade).
    mutating func adopt(_ s: MigrationSnapshot) {
        state = s.state
        outgoing = s.outgoing
        readPosition = s.readPosition
        incoming = s.incoming
        lastRefusal = nil
    }
}

/// A migration under way, as a live upgrade hands it to the next process:
/// the state, the outgoing stream and how much of it the client has read,
/// and what it has written of an incoming one.
public struct MigrationSnapshot: Sendable, Equatable {
    public var state: DeviceState
    public var outgoing: [UInt8]
    public var readPosition: Int
    public var incoming: [UInt8]

    public init(state: DeviceState, outgoing: [UInt8], readPosition: Int, incoming: [UInt8]) {
        self.state = state; self.outgoing = outgoing; self.readPosition = readPosition; self.incoming = incoming
    }
}

extension DeviceHost {
    /// The migration under way, nil while RUNNING (nothing to hand over).
    /// Only while the device is paused between requests.
    public var migrationSnapshot: MigrationSnapshot? {
        guard migration.state != .running else { return nil }
        return MigrationSnapshot(state: migration.state, outgoing: migration.outgoing, readPosition: migration.readPosition,
                                 incoming: migration.incoming)
    }

    /// Goes on with a previous process's migration, checked against what
    /// this device's machine could be in: a state umdev offers, an outgoing
    /// stream only while saving and headed by this device's identity, an
    /// incoming one only while resuming and within the cap. The device is
    /// stopped as the machine had it.
    public func adoptMigration(_ s: MigrationSnapshot) throws(DeviceError) {
        guard let identity = device.migrationIdentity else { throw DeviceError(EINVAL, "a migration handed over to a device that does not migrate") }
        let saving = s.state == .stopCopy || s.state == .preCopy
        guard MigrationMachine.arcs[s.state] != nil, s.state != .running else {
            throw DeviceError(EINVAL, "the handover's migration is in state \(s.state), which umdev does not offer")
        }
        guard s.readPosition >= 0, s.readPosition <= s.outgoing.count, s.outgoing.count <= MigrationMachine.maxStream,
              s.incoming.count <= MigrationMachine.maxStream,
              saving || (s.outgoing.isEmpty && s.readPosition == 0),
              s.state == .resuming || s.incoming.isEmpty,
              !saving || s.outgoing.starts(with: MigrationMachine.preamble(identity)) else {
            throw DeviceError(EINVAL, "the handover's migration streams do not fit its state \(s.state) or this device")
        }
        migration.adopt(s)
        device.setRunning(s.state == .preCopy)
    }
}

@inline(__always) func appendU32(_ a: inout [UInt8], _ v: UInt32) {
    for i in 0..<4 { a.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
}
