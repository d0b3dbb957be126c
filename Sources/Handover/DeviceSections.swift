import Glibc
import PCI
import VFIOUserServer

// The sections that carry one served device: where it listens and the
// memory its regions hand out (`DeviceSection`), and its client's
// connection (`ConnectionSection`). Descriptors are indices into the list
// that travels beside the bytes; `DescriptorList` builds it on the way out
// and `DescriptorPool` hands each one out once on the way in.

/// The descriptor list a writer builds: each descriptor once, in order.
public struct DescriptorList {
    public private(set) var fds: [Int32] = []
    public private(set) var inventory: [InventoryItem] = []
    /// Numbers descriptors itself instead of by position (the fd store's
    /// slots: `StateKeeper`); nil when it cannot (the list is then `failed`).
    let numbering: ((Int32) -> UInt32?)?
    private var numbers: [UInt32] = []
    /// A descriptor `numbering` could not number.
    public private(set) var failed = false
    public init() { numbering = nil }
    init(numbering: @escaping (Int32) -> UInt32?) { self.numbering = numbering }

    /// The index of `fd` in the list, adding it with its role and name.
    public mutating func add(_ fd: Int32, role: DescriptorRole, name: String) -> UInt32 {
        if let i = fds.firstIndex(of: fd) { return numbering == nil ? UInt32(i) : numbers[i] }
        fds.append(fd)
        var index = UInt32(fds.count - 1)
        if let numbering {
            if let n = numbering(fd) { index = n } else { failed = true }
            numbers.append(index)
        }
        inventory.append(InventoryItem(index: Int(index), role: role, name: name))
        return index
    }
}

/// The descriptors a reader was given, each handed out at most once; what
/// nothing claimed is closed at the end.
public final class DescriptorPool {
    private var fds: [Int32]
    public init(_ fds: [Int32]) { self.fds = fds }

    /// How many descriptors came with the handover.
    public var count: Int { fds.count }

    /// Descriptor `index`, now the caller's; refused when out of range or taken already.
    public func take(_ index: UInt32, for what: String) throws(DeviceError) -> Int32 {
        let i = Int(index)
        guard i < fds.count else { throw DeviceError(EINVAL, "handover names descriptor \(i) for \(what) but \(fds.count) came with it") }
        guard fds[i] >= 0 else { throw DeviceError(EINVAL, "handover names descriptor \(i) twice (again for \(what))") }
        defer { fds[i] = -1 }
        return fds[i]
    }

    /// Whether descriptor `index` exists and has not been taken.
    public func available(_ index: UInt32) -> Bool { Int(index) < fds.count && fds[Int(index)] >= 0 }

    /// Closes what nothing took; returns how many.
    @discardableResult
    public func closeUnclaimed() -> Int {
        var n = 0
        for i in fds.indices where fds[i] >= 0 { close(fds[i]); fds[i] = -1; n += 1 }
        return n
    }

    deinit { closeUnclaimed() }
}

private let none = UInt32.max

/// A served device's own descriptors: its listening socket (if it has one)
/// and the memory its regions let the client map.
public struct DeviceSection: Equatable, Sendable {
    /// Which device of the handover ("" for `umdev serve`'s one).
    public var instance: String
    /// The listening socket's index, if the device listens.
    public var listener: UInt32?
    /// Whether the socket file is the server's to remove on stop.
    public var ownsSocketFile: Bool
    /// Indices of the memory the regions hand out (memfds), in region order.
    public var regionMemory: [UInt32]
    /// The path the socket file is at, when it has one. (The listener's own
    /// address may be the name it was bound to before it was renamed into
    /// place.) Written last, and only when known: a section without it
    /// reads as one from before it was added.
    public var socketPath: String?

    public init(instance: String, listener: UInt32?, ownsSocketFile: Bool, regionMemory: [UInt32], socketPath: String? = nil) {
        self.instance = instance; self.listener = listener; self.ownsSocketFile = ownsSocketFile; self.regionMemory = regionMemory
        self.socketPath = socketPath.flatMap { $0.isEmpty ? nil : $0 }
    }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(instance); w.u32(listener ?? none); w.u8(ownsSocketFile ? 1 : 0)
        w.u16(UInt16(regionMemory.count)); for m in regionMemory { w.u32(m) }
        if let socketPath { w.name(socketPath) }
        return Handover.Section(type: SectionType.device.rawValue, required: true, payload: w.bytes)
    }

    public init(_ payload: [UInt8], descriptorCount: Int) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover device section")
        instance = try r.name()
        let l = try r.u32()
        listener = l == none ? nil : try checked(l, descriptorCount, "the listener")
        ownsSocketFile = try flag(&r, "owns-socket-file")
        let n = Int(try r.u16())
        var memory: [UInt32] = []
        for _ in 0..<n { memory.append(try checked(try r.u32(), descriptorCount, "region memory")) }
        regionMemory = memory
        if r.remaining > 0 {
            let path = try r.name()
            guard path.hasPrefix("/"), !path.utf8.contains(0) else {
                throw DeviceError(EINVAL, "handover device section: the socket path \"\(path.prefix(64))\" is not absolute")
            }
            socketPath = path
        } else {
            socketPath = nil
        }
        try r.finish()
    }
}

/// A one-byte boolean: 0 or 1, nothing else (so what decodes encodes back to the same bytes).
private func flag(_ r: inout StateReader, _ what: String) throws(DeviceError) -> Bool {
    switch try r.u8() {
    case 0: return false
    case 1: return true
    case let v: throw DeviceError(EINVAL, "handover: \(what) is \(v), not 0 or 1")
    }
}

private func checked(_ index: UInt32, _ count: Int, _ what: String) throws(DeviceError) -> UInt32 {
    guard Int(index) < count else { throw DeviceError(EINVAL, "handover names descriptor \(index) for \(what) but \(count) came with it") }
    return index
}

/// The attached client's connection: its socket and `ConnectionState`
/// (negotiated capabilities, unhandled bytes, DMA windows, IRQ wiring),
/// with every descriptor as an index.
public struct ConnectionSection: Sendable {
    public var instance: String
    public var socket: UInt32
    /// Descriptor fields hold indices into the handover's list.
    public var state: ConnectionState

    public init(instance: String, socket: UInt32, state: ConnectionState) {
        self.instance = instance; self.socket = socket; self.state = state
    }

    /// Writes a live connection, adding its descriptors to `list`.
    public init(instance: String, socket: Int32, live s: ConnectionState, into list: inout DescriptorList) {
        let prefix = instance.isEmpty ? "" : instance + "/"
        var state = s
        let socketIndex = list.add(socket, role: .clientConnection, name: prefix + "client")
        state.framer.pendingFDs = s.framer.pendingFDs.map { Int32(list.add($0, role: .pendingMessageDescriptor, name: prefix + "pending")) }
        state.windows = s.windows.map { w in
            var w = w
            if w.fd >= 0 { w.fd = Int32(list.add(w.fd, role: .dmaWindow, name: prefix + "dma@\(String(w.map.address, radix: 16))")) }
            return w
        }
        state.vectors = s.vectors.map { v in
            var v = v
            let at = "irq\(v.index).\(v.vector)"
            if v.trigger >= 0 { v.trigger = Int32(list.add(v.trigger, role: .irqTrigger, name: prefix + at)) }
            if v.unmask >= 0 { v.unmask = Int32(list.add(v.unmask, role: .irqUnmask, name: prefix + at + "-unmask")) }
            if v.mask >= 0 { v.mask = Int32(list.add(v.mask, role: .irqMask, name: prefix + at + "-mask")) }
            return v
        }
        self.init(instance: instance, socket: socketIndex, state: state)
    }

    public var section: Handover.Section {
        var w = StateWriter()
        w.name(instance)
        w.u32(socket)
        let s = state
        if let c = s.client {
            w.u8(1)
            w.u32(UInt32(c.maxMessageFDs)); w.u64(UInt64(c.maxDataTransferSize)); w.u64(c.pageSizes); w.u32(UInt32(c.maxDMAMaps))
            w.u8(c.migration != nil ? 1 : 0); w.u64(c.migration?.pageSize ?? 0); w.u64(c.migration?.maxBitmapSize ?? 0)
            w.u8(c.writeMultiple ? 1 : 0); w.u8(c.twinSocket ? 1 : 0)
            w.u8(c.gfxPlane != nil ? 1 : 0); w.u32(UInt32(c.gfxPlane ?? 0)); w.u8(c.named.rawValue)
        } else {
            w.u8(0)
        }
        w.u32(UInt32(s.fdLimit)); w.u32(UInt32(s.maxWindows)); w.u16(s.lastRequestID); w.u8(s.intxLevel ? 1 : 0)
        w.u32(UInt32(s.framer.bytes.count)); w.raw(s.framer.bytes)
        w.u8(UInt8(s.framer.pendingFDs.count)); for fd in s.framer.pendingFDs { w.u32(UInt32(fd)) }
        w.u32(UInt32(bitPattern: Int32(s.framer.pendingFDOwner))); w.u8(s.framer.pendingOverflow ? 1 : 0)
        w.u32(UInt32(s.framer.discard))
        w.u32(UInt32(s.windows.count))
        for x in s.windows {
            w.u64(x.map.address); w.u64(x.map.size); w.u64(x.map.offset); w.u32(x.map.flags)
            w.u32(x.fd >= 0 ? UInt32(x.fd) : none)
        }
        w.u32(UInt32(s.vectors.count))
        for v in s.vectors {
            w.u16(UInt16(v.index)); w.u16(UInt16(v.vector))
            for fd in [v.trigger, v.unmask, v.mask] { w.u32(fd >= 0 ? UInt32(fd) : none) }
            w.u8((v.masked ? 1 : 0) | (v.pending ? 2 : 0))
        }
        return Handover.Section(type: SectionType.connection.rawValue, required: true, payload: w.bytes)
    }

    /// Reads the section, checking every count and index against the
    /// limits a client's own messages are held to.
    public init(_ payload: [UInt8], descriptorCount: Int) throws(DeviceError) {
        var r = StateReader(fields: payload, what: "handover connection section")
        instance = try r.name()
        socket = try checked(try r.u32(), descriptorCount, "the client connection")
        var client: Capabilities?
        switch try r.u8() {
        case 0: client = nil
        case 1:
            var c = Capabilities()
            c.maxMessageFDs = Int(try r.u32())
            let transfer = try r.u64()
            guard transfer <= UInt64(Int.max) else { throw DeviceError(EINVAL, "handover connection section: max_data_xfer_size \(transfer)") }
            c.maxDataTransferSize = Int(transfer)
            c.pageSizes = try r.u64(); c.maxDMAMaps = Int(try r.u32())
            let migration = try flag(&r, "migration")
            let pageSize = try r.u64(), bitmap = try r.u64()
            guard migration || (pageSize == 0 && bitmap == 0) else {
                throw DeviceError(EINVAL, "handover connection section: migration limits without migration")
            }
            c.migration = migration ? Capabilities.Migration(pageSize: pageSize, maxBitmapSize: bitmap) : nil
            c.writeMultiple = try flag(&r, "write_multiple"); c.twinSocket = try flag(&r, "twin_socket")
            let gfx = try flag(&r, "display-plane")
            let gfxVersion = try r.u32()
            guard gfx || gfxVersion == 0 else { throw DeviceError(EINVAL, "handover connection section: a display-plane version without the plane") }
            c.gfxPlane = gfx ? Int(gfxVersion) : nil
            let named = try r.u8()
            guard named & ~Capabilities.Limit.all.rawValue == 0 else {
                throw DeviceError(EINVAL, "handover connection section: named-limits bits \(named)")
            }
            c.named = Capabilities.Limit(rawValue: named)
            client = c
        case let v: throw DeviceError(EINVAL, "handover connection section: negotiated flag \(v)")
        }
        let fdLimit = Int(try r.u32()), maxWindows = Int(try r.u32()), lastID = try r.u16(), intx = try flag(&r, "INTx level")
        let byteCount = Int(try r.u32())
        guard byteCount <= Limits.maxMessageSize + 4096 else {
            throw DeviceError(EINVAL, "handover connection section: \(byteCount) buffered bytes is more than a framer holds")
        }
        let bytes = try r.raw(byteCount)
        let pendingCount = Int(try r.u8())
        guard pendingCount <= Limits.maxMessageFDs else {
            throw DeviceError(EINVAL, "handover connection section: \(pendingCount) pending descriptors")
        }
        var pending: [Int32] = []
        for _ in 0..<pendingCount { pending.append(Int32(try checked(try r.u32(), descriptorCount, "a pending message"))) }
        let owner = Int(Int32(bitPattern: try r.u32()))
        let overflow = try flag(&r, "descriptor overflow")
        let discard = Int(try r.u32())
        let windowCount = Int(try r.u32())
        guard windowCount <= Limits.maxDMAMaps, windowCount <= r.remaining / 32 else {
            throw DeviceError(EINVAL, "handover connection section: \(windowCount) DMA windows")
        }
        var windows: [ConnectionState.DMAWindowRecord] = []
        for _ in 0..<windowCount {
            let address = try r.u64(), size = try r.u64(), offset = try r.u64(), flags = try r.u32()
            let fd = try r.u32()
            windows.append(.init(map: DMAMap(flags: flags, offset: offset, address: address, size: size),
                                 fd: fd == none ? -1 : Int32(try checked(fd, descriptorCount, "a DMA window"))))
        }
        let vectorCount = Int(try r.u32())
        guard vectorCount <= r.remaining / 17 else { throw DeviceError(EINVAL, "handover connection section: \(vectorCount) IRQ vectors") }
        var vectors: [InterruptState.VectorRecord] = []
        for _ in 0..<vectorCount {
            let index = Int(try r.u16()), vector = Int(try r.u16())
            var fds: [Int32] = []
            for what in ["an IRQ trigger", "an IRQ unmask", "an IRQ mask"] {
                let i = try r.u32()
                fds.append(i == none ? -1 : Int32(try checked(i, descriptorCount, what)))
            }
            let bits = try r.u8()
            guard bits & ~3 == 0 else { throw DeviceError(EINVAL, "handover connection section: IRQ flags \(bits)") }
            vectors.append(.init(index: index, vector: vector, trigger: fds[0], unmask: fds[1], mask: fds[2],
                                 masked: bits & 1 != 0, pending: bits & 2 != 0))
        }
        try r.finish()
        state = ConnectionState(client: client, fdLimit: fdLimit, maxWindows: maxWindows, lastRequestID: lastID, intxLevel: intx,
                                framer: .init(bytes: bytes, pendingFDs: pending, pendingFDOwner: owner, pendingOverflow: overflow,
                                              discard: discard),
                                windows: windows, vectors: vectors)
    }

    /// The state with real descriptors from `pool` in place of indices
    /// (each taken once; the caller owns them from here).
    public func resolved(from pool: DescriptorPool) throws(DeviceError) -> ConnectionState {
        var s = state
        var taken: [Int32] = []
        do throws(DeviceError) {
            func take(_ i: Int32, _ what: String) throws(DeviceError) -> Int32 {
                guard i >= 0 else { return -1 }
                let fd = try pool.take(UInt32(i), for: what)
                taken.append(fd)
                return fd
            }
            s.framer.pendingFDs = try s.framer.pendingFDs.map { (i) throws(DeviceError) in try take(i, "a pending message") }
            for k in s.windows.indices { s.windows[k].fd = try take(s.windows[k].fd, "a DMA window") }
            for k in s.vectors.indices {
                s.vectors[k].trigger = try take(s.vectors[k].trigger, "an IRQ trigger")
                s.vectors[k].unmask = try take(s.vectors[k].unmask, "an IRQ unmask")
                s.vectors[k].mask = try take(s.vectors[k].mask, "an IRQ mask")
            }
        } catch {
            for fd in taken { close(fd) }
            throw error
        }
        return s
    }
}
