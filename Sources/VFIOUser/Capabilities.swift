#if canImport(Glibc)
import Glibc
#endif

/// The `capabilities` object of a VERSION message (spec §"Version").
/// Absent keys take the spec's defaults.
public struct Capabilities: Equatable, Sendable {
    /// Migration capability (`migration` object).
    public struct Migration: Equatable, Sendable {
        public var pageSize: UInt64 = Limits.pageSize
        public var maxBitmapSize: UInt64 = 256 << 20
        public init(pageSize: UInt64 = Limits.pageSize, maxBitmapSize: UInt64 = 256 << 20) {
            self.pageSize = pageSize; self.maxBitmapSize = maxBitmapSize
        }
    }

    /// Most descriptors the sender can receive in one message (spec default 1).
    public var maxMessageFDs: Int = 1
    /// Largest `count` in a data transfer the sender accepts (default 1 MiB).
    public var maxDataTransferSize: Int = 1 << 20
    /// Supported DMA page sizes, OR'ed (default 4 KiB).
    public var pageSizes: UInt64 = Limits.pageSize
    /// Most simultaneous DMA windows (default 65535).
    public var maxDMAMaps: Int = 65535
    /// Present when the sender supports migration.
    public var migration: Migration?
    /// Sender supports REGION_WRITE_MULTI.
    public var writeMultiple = false
    /// Sender supports a separate server→client socket (twin_socket.supported).
    public var twinSocket = false
    /// Sender speaks umdev's display-plane messages (`x-umdev-gfx-plane`,
    /// Protocol/README.md §22): the version it proposes, nil when absent.
    public var gfxPlane: Int?
    /// Which of the four limits the message names. An absent one takes the
    /// spec's default, and a reply names only what the proposal named.
    public var named: Limit = .all

    /// The four numeric limits of a capabilities object, by key.
    public struct Limit: OptionSet, Equatable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// `max_msg_fds`
        public static let maxMessageFDs = Limit(rawValue: 1 << 0)
        /// `max_data_xfer_size`
        public static let maxDataTransferSize = Limit(rawValue: 1 << 1)
        /// `pgsizes`
        public static let pageSizes = Limit(rawValue: 1 << 2)
        /// `max_dma_maps`
        public static let maxDMAMaps = Limit(rawValue: 1 << 3)
        public static let all: Limit = [.maxMessageFDs, .maxDataTransferSize, .pageSizes, .maxDMAMaps]
    }

    /// The capability key of the display-plane extension, and its version.
    public static let gfxPlaneKey = "x-umdev-gfx-plane"
    public static let gfxPlaneVersion = 1

    /// Capabilities as a peer proposing them names all four limits.
    public init() {}

    /// What a VERSION without JSON (or with no `capabilities`) says: no key
    /// named, every default.
    public static var unstated: Capabilities {
        var caps = Capabilities()
        caps.named = []
        return caps
    }

    /// Parses the JSON text (without its NUL). Unknown keys are ignored; a
    /// known key of the wrong type or out of range is EINVAL.
    public static func parse(json text: UnsafeRawBufferPointer) throws(ProtocolError) -> Capabilities {
        let doc: JSONValue
        do { doc = try JSONParser.parse(text) } catch { throw .invalid("malformed VERSION JSON") }
        guard case .object = doc else { throw .invalid("VERSION JSON is not an object") }
        var caps = Capabilities.unstated
        guard let body = doc["capabilities"] else { return caps }
        guard case .object = body else { throw .invalid("capabilities is not an object") }

        func integer(_ key: String, _ range: ClosedRange<Int64>) throws(ProtocolError) -> Int64? {
            guard let v = body[key] else { return nil }
            guard case .integer(let i) = v, range.contains(i) else { throw .invalid("capability out of range or not an integer") }
            return i
        }
        if let v = try integer("max_msg_fds", 0...1024) { caps.maxMessageFDs = Int(v); caps.named.insert(.maxMessageFDs) }
        if let v = try integer("max_data_xfer_size", 1...Int64(Int32.max)) {
            caps.maxDataTransferSize = Int(v); caps.named.insert(.maxDataTransferSize)
        }
        if let v = try integer("pgsizes", 1...Int64.max) { caps.pageSizes = UInt64(v); caps.named.insert(.pageSizes) }
        if let v = try integer("max_dma_maps", 1...Int64(Int32.max)) { caps.maxDMAMaps = Int(v); caps.named.insert(.maxDMAMaps) }
        if let w = body["write_multiple"] {
            guard case .bool(let b) = w else { throw .invalid("write_multiple is not a boolean") }
            caps.writeMultiple = b
        }
        if let m = body["migration"] {
            guard case .object = m else { throw .invalid("migration is not an object") }
            var mig = Migration()
            if let ps = m["pgsize"] {
                guard case .integer(let i) = ps, i == Int64(Limits.pageSize) else { throw .invalid("migration pgsize is not 4096") }
                mig.pageSize = UInt64(i)
            }
            if let mb = m["max_bitmap_size"] {
                guard case .integer(let i) = mb, i > 0 else { throw .invalid("migration max_bitmap_size out of range") }
                mig.maxBitmapSize = UInt64(i)
            }
            caps.migration = mig
        }
        if let g = body[gfxPlaneKey] {
            guard case .object = g else { throw .invalid("x-umdev-gfx-plane is not an object") }
            guard let v = g["version"], case .integer(let version) = v, version >= 1, version <= Int64(Int32.max)
            else { throw .invalid("x-umdev-gfx-plane.version is not an integer ≥ 1") }
            caps.gfxPlane = Int(version)
        }
        if let t = body["twin_socket"] {
            guard case .object = t else { throw .invalid("twin_socket is not an object") }
            if let s = t["supported"] {
                guard case .bool(let b) = s else { throw .invalid("twin_socket.supported is not a boolean") }
                caps.twinSocket = b
            }
        }
        return caps
    }

    /// The JSON text a peer sends, compact, keys in a fixed order.
    public var json: String {
        var members: [(String, JSONValue)] = []
        if named.contains(.maxMessageFDs) { members.append(("max_msg_fds", .integer(Int64(maxMessageFDs)))) }
        if named.contains(.maxDataTransferSize) { members.append(("max_data_xfer_size", .integer(Int64(maxDataTransferSize)))) }
        if named.contains(.pageSizes) { members.append(("pgsizes", .integer(Int64(bitPattern: pageSizes)))) }
        if named.contains(.maxDMAMaps) { members.append(("max_dma_maps", .integer(Int64(maxDMAMaps)))) }
        if let m = migration { members.append(("migration", .object([("pgsize", .integer(Int64(m.pageSize)))]))) }
        if writeMultiple { members.append(("write_multiple", .bool(true))) }
        if let g = gfxPlane { members.append((Capabilities.gfxPlaneKey, .object([("version", .integer(Int64(g)))]))) }
        return JSONValue.object([("capabilities", .object(members))]).serialized
    }

    /// The VERSION reply payload: version 0.0 and these capabilities as
    /// NUL-terminated JSON.
    public func encodeVersionReply(_ w: inout MessageWriter) {
        w.u16(0); w.u16(0)
        w.bytes(Array(json.utf8))
        w.u8(0)
    }

    /// What a server answers to a client's capabilities: its own limits for
    /// what it receives, and only features both sides have. The reply names
    /// only keys the client proposed ("The capability list must be a subset
    /// of those proposed"): a limit the client left out is the spec's
    /// default for both sides, and the server then enforces it.
    /// `offersMigration` is whether the device supports migration.
    public static func serverReply(to client: Capabilities, offersMigration: Bool) throws(ProtocolError) -> Capabilities {
        var reply = Capabilities()
        reply.named = client.named
        // Unnamed, the server's receive limit is the default of 1 descriptor.
        if client.named.contains(.maxMessageFDs) { reply.maxMessageFDs = Limits.maxMessageFDs }
        reply.maxDataTransferSize = Limits.maxDataTransfer
        reply.pageSizes = client.pageSizes & Limits.pageSize
        guard reply.pageSizes != 0 else { throw .invalid("client supports no 4 KiB DMA pages") }
        reply.maxDMAMaps = min(client.maxDMAMaps, Limits.maxDMAMaps)
        if offersMigration, client.migration != nil { reply.migration = Migration() }
        reply.writeMultiple = client.writeMultiple
        // Only ever echoed: a client that did not propose it never sees it.
        if let v = client.gfxPlane { reply.gfxPlane = min(v, gfxPlaneVersion) }
        return reply
    }
}
