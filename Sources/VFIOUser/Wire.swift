#if canImport(Glibc)
import Glibc
#endif

/// vfio-user command numbers (spec "Commands" table; Protocol/README.md §2).
public enum Command: UInt16, Sendable, CaseIterable {
    case version = 1
    case dmaMap = 2
    case dmaUnmap = 3
    case deviceGetInfo = 4
    case deviceGetRegionInfo = 5
    case deviceGetRegionIOFDs = 6
    case deviceGetIRQInfo = 7
    case deviceSetIRQs = 8
    case regionRead = 9
    case regionWrite = 10
    case dmaRead = 11
    case dmaWrite = 12
    case deviceReset = 13
    /// Legacy migration-v1 dirty-page query; defined but answered ENOTSUP.
    case dirtyPages = 14
    case regionWriteMulti = 15
    case deviceFeature = 16
    case migDataRead = 17
    case migDataWrite = 18
    /// umdev's display-plane extension (Protocol/README.md §22): commands
    /// 0x7f00–0x7fff are umdev's, far above any number the spec uses.
    /// VFIO_DEVICE_QUERY_GFX_PLANE as a message.
    case queryGfxPlane = 0x7f00
    /// VFIO_DEVICE_GET_GFX_DMABUF as a message: the reply carries the buffer's memfd.
    case getGfxDmabuf = 0x7f01

    public var name: String {
        switch self {
        case .version: "VERSION"
        case .dmaMap: "DMA_MAP"
        case .dmaUnmap: "DMA_UNMAP"
        case .deviceGetInfo: "DEVICE_GET_INFO"
        case .deviceGetRegionInfo: "DEVICE_GET_REGION_INFO"
        case .deviceGetRegionIOFDs: "DEVICE_GET_REGION_IO_FDS"
        case .deviceGetIRQInfo: "DEVICE_GET_IRQ_INFO"
        case .deviceSetIRQs: "DEVICE_SET_IRQS"
        case .regionRead: "REGION_READ"
        case .regionWrite: "REGION_WRITE"
        case .dmaRead: "DMA_READ"
        case .dmaWrite: "DMA_WRITE"
        case .deviceReset: "DEVICE_RESET"
        case .dirtyPages: "DIRTY_PAGES"
        case .regionWriteMulti: "REGION_WRITE_MULTI"
        case .deviceFeature: "DEVICE_FEATURE"
        case .migDataRead: "MIG_DATA_READ"
        case .migDataWrite: "MIG_DATA_WRITE"
        case .queryGfxPlane: "QUERY_GFX_PLANE"
        case .getGfxDmabuf: "GET_GFX_DMABUF"
        }
    }
}

/// An errno carried in an error reply, with a short reason for logs.
public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Positive errno value placed in the reply header.
    public let errno: Int32
    public let reason: StaticString

    @inlinable
    public init(_ errno: Int32, _ reason: StaticString) {
        self.errno = errno
        self.reason = reason
    }

    /// The same errno from the same check: a test that expects one refusal
    /// is not satisfied by another that happens to share its errno.
    public static func == (a: ProtocolError, b: ProtocolError) -> Bool {
        a.errno == b.errno && a.reason.description == b.reason.description
    }

    public var description: String { "\(reason) (errno \(errno))" }

    @inlinable
    public static func invalid(_ reason: StaticString) -> ProtocolError { ProtocolError(EINVAL, reason) }
}

/// The 16-byte message header.
public struct Header: Equatable, Sendable {
    public static let size = 16

    /// Bits 0–3 of flags: message type.
    public static let typeMask: UInt32 = 0x0f
    public static let typeCommand: UInt32 = 0
    public static let typeReply: UInt32 = 1
    /// The sender does not want a reply (posted writes).
    public static let noReply: UInt32 = 0x10
    /// Reply carries an errno in `error`.
    public static let errorFlag: UInt32 = 0x20
    public static let knownFlags: UInt32 = typeMask | noReply | errorFlag

    public var messageID: UInt16
    public var command: UInt16
    public var messageSize: UInt32
    public var flags: UInt32
    public var error: UInt32

    public init(messageID: UInt16, command: UInt16, messageSize: UInt32, flags: UInt32 = 0, error: UInt32 = 0) {
        self.messageID = messageID
        self.command = command
        self.messageSize = messageSize
        self.flags = flags
        self.error = error
    }

    /// Reads a header from the first 16 bytes of `bytes` (caller checks the length).
    @inline(__always)
    public init(_ bytes: UnsafeRawPointer) {
        messageID = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
        command = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        messageSize = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        flags = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        error = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
    }

    @inline(__always)
    public func store(to bytes: UnsafeMutableRawPointer) {
        bytes.storeBytes(of: messageID.littleEndian, toByteOffset: 0, as: UInt16.self)
        bytes.storeBytes(of: command.littleEndian, toByteOffset: 2, as: UInt16.self)
        bytes.storeBytes(of: messageSize.littleEndian, toByteOffset: 4, as: UInt32.self)
        bytes.storeBytes(of: flags.littleEndian, toByteOffset: 8, as: UInt32.self)
        bytes.storeBytes(of: error.littleEndian, toByteOffset: 12, as: UInt32.self)
    }

    public var isReply: Bool { flags & Header.typeMask == Header.typeReply }
    public var isCommand: Bool { flags & Header.typeMask == Header.typeCommand }
    public var wantsReply: Bool { flags & Header.noReply == 0 }
    public var isError: Bool { flags & Header.errorFlag != 0 }
    /// A command whose only flag, if any, is no-reply, with no error: a
    /// header `Request.decode` accepts for any command that carries no
    /// descriptors (it refuses every other flag, type and error).
    @inlinable @inline(__always) public var isPlainCommand: Bool { flags & ~Header.noReply == Header.typeCommand && error == 0 }
    public var payloadSize: Int { Int(messageSize) - Header.size }
}

/// Little-endian field access over a payload, bounds checked by the caller's
/// size validation (decoders check the payload length before reading).
extension UnsafeRawBufferPointer {
    @inline(__always) public func u8(_ o: Int) -> UInt8 { self[o] }
    @inline(__always) public func u16(_ o: Int) -> UInt16 {
        UInt16(littleEndian: baseAddress!.loadUnaligned(fromByteOffset: o, as: UInt16.self))
    }
    @inlinable @inline(__always) public func u32(_ o: Int) -> UInt32 {
        UInt32(littleEndian: baseAddress!.loadUnaligned(fromByteOffset: o, as: UInt32.self))
    }
    @inlinable @inline(__always) public func u64(_ o: Int) -> UInt64 {
        UInt64(littleEndian: baseAddress!.loadUnaligned(fromByteOffset: o, as: UInt64.self))
    }
}

/// Appends little-endian fields to a caller-owned buffer. The buffers used
/// with it are sized for the largest message, so an overflow is a bug in
/// umdev, not input: it traps.
public struct MessageWriter {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    public private(set) var count: Int

    /// Starts a message; the header is written by `finish`.
    @inline(__always)
    public init(_ buffer: UnsafeMutableRawBufferPointer) {
        base = buffer.baseAddress!
        capacity = buffer.count
        count = Header.size
    }

    @inline(__always) mutating func reserve(_ n: Int) -> UnsafeMutableRawPointer {
        precondition(count + n <= capacity, "message buffer too small")
        defer { count += n }
        return base + count
    }
    @inline(__always) public mutating func u8(_ v: UInt8) { reserve(1).storeBytes(of: v, as: UInt8.self) }
    @inline(__always) public mutating func u16(_ v: UInt16) { reserve(2).storeBytes(of: v.littleEndian, as: UInt16.self) }
    @inline(__always) public mutating func u32(_ v: UInt32) { reserve(4).storeBytes(of: v.littleEndian, as: UInt32.self) }
    @inline(__always) public mutating func u64(_ v: UInt64) { reserve(8).storeBytes(of: v.littleEndian, as: UInt64.self) }
    @inline(__always) public mutating func bytes(_ b: UnsafeRawBufferPointer) {
        guard b.count > 0 else { return }
        reserve(b.count).copyMemory(from: b.baseAddress!, byteCount: b.count)
    }
    public mutating func bytes(_ b: [UInt8]) { b.withUnsafeBytes { bytes($0) } }
    /// Reserves `n` zeroed bytes and returns where they start, for callers that fill them in place.
    @inline(__always) public mutating func space(_ n: Int) -> UnsafeMutableRawBufferPointer {
        let p = reserve(n)
        return UnsafeMutableRawBufferPointer(start: p, count: n)
    }
    /// Overwrites a u32 already written at payload-relative `offset`.
    public func patch32(payloadOffset offset: Int, _ v: UInt32) {
        (base + Header.size + offset).storeBytes(of: v.littleEndian, as: UInt32.self)
    }
    /// Drops everything after payload byte `n`.
    public mutating func truncate(payloadBytes n: Int) { count = min(count, Header.size + n) }
    public var payloadCount: Int { count - Header.size }

    /// Writes the header (with the final size) and returns the message length.
    @inline(__always)
    public func finish(messageID: UInt16, command: UInt16, flags: UInt32, error: UInt32 = 0) -> Int {
        Header(messageID: messageID, command: command, messageSize: UInt32(count), flags: flags, error: error).store(to: base)
        return count
    }
}
