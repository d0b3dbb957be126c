import CShim
import Descriptors
import Glibc
import Logging
import PCI
import SystemPackage
import VFIOUser

/// A device as served: the model, its type name, and the state that
/// outlives a single client connection (migration state).
public final class DeviceHost {
    public let device: VFIODevice
    /// The device type, e.g. "mtty-2"; written into migration streams.
    public let typeName: String
    @exclusivity(unchecked) var migration = MigrationMachine()
    /// What the device looks like from outside, read once: it does not
    /// change while served, and the display socket shares it.
    public let description: DeviceDescription
    /// Where another thread asks the client to release the device (REQ).
    public let requestLine = RequestLine()
    var regions: [Region] { description.regions }
    var irqs: [IRQ] { description.irqs }

    public init(device: VFIODevice, typeName: String) {
        self.device = device
        self.typeName = typeName
        description = DeviceDescription(device: device)
    }

    public var migrationState: DeviceState { migration.state }

    // MARK: Management (only while no client is attached: DeviceServer.withIdleDevice)

    /// DEVICE_RESET, as a client would ask it.
    public func resetDevice() {
        device.reset()
        backToRunning()
    }

    /// Abandons any migration: the state machine and the device are RUNNING.
    func backToRunning() {
        migration.reset()
        device.setRunning(true)
    }

    /// A snapshot of the device's migration stream: RUNNING → STOP_COPY, the
    /// whole stream, then back to RUNNING.
    public func saveMigrationState() throws(DeviceError) -> [UInt8] {
        do throws(ProtocolError) {
            try migration.transition(to: .stopCopy, device: device)
            let stream = Array(try migration.read(max: migration.pendingBytes))
            try migration.transition(to: .running, device: device)
            return stream
        } catch {
            backToRunning()
            throw DeviceError(error.errno, "\(error.reason)")
        }
    }

    /// Loads a migration stream: RUNNING → RESUMING, the stream, STOP (where
    /// its identity is checked against the device), RUNNING. A refused
    /// stream leaves the device as it was, running; the error says why.
    public func loadMigrationState(_ stream: [UInt8]) throws(DeviceError) {
        guard stream.count <= MigrationMachine.maxStream else {
            throw DeviceError(EFBIG, "a migration stream is at most \(MigrationMachine.maxStream >> 20) MiB")
        }
        do throws(ProtocolError) {
            try migration.transition(to: .resuming, device: device)
            let written = stream.withUnsafeBytes { b -> Result<Void, ProtocolError> in
                do throws(ProtocolError) { try migration.write(b); return .success(()) } catch { return .failure(error) }
            }
            try written.get()
            try migration.transition(to: .running, device: device)
        } catch {
            let why = migration.lastRefusal ?? "\(error.reason)"
            backToRunning()
            throw DeviceError(error.errno, why)
        }
    }
}

/// The device's fixed facts and the info replies built from them: regions,
/// IRQ indices, reset support and display planes. Immutable, so any thread
/// may answer from it.
public struct DeviceDescription: Sendable {
    public let regions: [Region]
    public let irqs: [IRQ]
    public let supportsReset: Bool
    public let display: DisplayFacts

    init(device: VFIODevice) {
        regions = device.regions
        irqs = device.irqs
        supportsReset = device.supportsReset
        display = DisplayFacts(device: device)
    }

    /// DEVICE_GET_INFO's reply.
    func deviceInfo(into w: inout MessageWriter) {
        w.u32(16)
        w.u32(VFIO.deviceFlagsPCI | (supportsReset ? VFIO.deviceFlagsReset : 0))
        w.u32(UInt32(regions.count))
        w.u32(UInt32(irqs.count))
    }

    /// DEVICE_GET_REGION_INFO's reply; returns the descriptor to attach, if any (the device's).
    func regionInfo(index: UInt32, argsz: UInt32, into w: inout MessageWriter) throws(ProtocolError) -> FileDescriptor? {
        guard Int(index) < regions.count else { throw ProtocolError.invalid("region index out of range") }
        return try RegionInfoReply.encode(regions[Int(index)], index: index, argsz: argsz, into: &w)
    }

    /// DEVICE_GET_REGION_IO_FDS's reply: umdev offers no ioeventfds.
    func regionIOFDs(index: UInt32, into w: inout MessageWriter) throws(ProtocolError) {
        guard Int(index) < regions.count else { throw ProtocolError.invalid("region index out of range") }
        w.u32(16); w.u32(0); w.u32(index); w.u32(0)
    }

    /// DEVICE_GET_IRQ_INFO's reply.
    func irqInfo(index: UInt32, into w: inout MessageWriter) throws(ProtocolError) {
        guard Int(index) < irqs.count else { throw ProtocolError.invalid("IRQ index out of range") }
        let irq = irqs[Int(index)]
        var flags = VFIO.irqInfoEventfd
        if irq.maskable { flags |= VFIO.irqInfoMaskable }
        if irq.automasked { flags |= VFIO.irqInfoAutomasked }
        if irq.noResize { flags |= VFIO.irqInfoNoResize }
        w.u32(16); w.u32(flags); w.u32(index); w.u32(irq.count)
    }
}

/// Serves one client connection: decodes each request, routes it to the
/// device, and answers. Runs on the connection's own thread and owns the
/// per-connection state (negotiated capabilities, DMA windows, IRQ
/// eventfds); no locks.
///
/// State on the request path is `@exclusivity(unchecked)` here, in the
/// transport, the interrupt and DMA tables and the device models: one
/// thread owns it (DeviceServer), so Swift's dynamic exclusivity checks,
/// some 80 instructions each and seven per request, bought nothing but a
/// third of the cost of a register read (scripts/measure.sh).
///
/// Generic over its channel and clock, and used with concrete types
/// (`SocketEndpoint` in the server, an `InMemoryChannel` one in tests), so the request path is specialised: no witness-table calls.
public final class Endpoint<Channel: MessageChannel, Clock: MonotonicClock> {
    public let host: DeviceHost
    public let transport: Transport<Channel>
    let clock: Clock
    let logger: Logger
    /// Client capabilities once VERSION succeeded.
    @exclusivity(unchecked) public internal(set) var client: Capabilities?
    public let dma: DMATable
    public let interrupts: InterruptState
    private lazy var guestMemory = GuestMemory<Channel, Clock>(endpoint: self)
    /// Per-region facts the hot path needs, flattened.
    private let regionSize: [UInt64]
    private let regionAccess: [UInt8] // bit0 read, bit1 write
    @exclusivity(unchecked) var nextRequestID: UInt16 = 0
    /// Most descriptors a message may carry: what the VERSION reply named,
    /// or the spec's default of 1 when the client's proposal left it out.
    @exclusivity(unchecked) var fdLimit = Limits.maxMessageFDs
    @exclusivity(unchecked) private var pollIRQ: [(fd: Int32, index: Int, vector: Int, unmask: Bool)] = []
    /// Reused by every wait, so polling (a KVM resample fd, a pty) allocates nothing per message.
    @exclusivity(unchecked) private var pollSet: [pollfd] = []
    /// Opt-in busy polling (`umdev serve --poll-us`): a core traded for latency.
    private let pollNanoseconds: UInt64
    /// The model's `hasHostEvents`, a constant: read once, not on every message.
    private let hostEvents: Bool
    /// `host.device`, held here for the request path: a call through a `let`
    /// of this endpoint needs no retain and release (one through `host`
    /// does, as `host` could let the device go meanwhile).
    private let model: VFIODevice

    /// Serves `host` over `channel`, reading time from `clock`.
    /// `pollMicroseconds`: how long to spin on the channel for the next
    /// request before blocking (0: block at once, the default).
    public init(host: DeviceHost, channel: Channel, framer: MessageFramer = MessageFramer(), clock: Clock,
                logger: Logger, pollMicroseconds: Int = 0) {
        self.pollNanoseconds = UInt64(max(0, pollMicroseconds)) * 1000
        self.host = host
        self.transport = Transport(channel: channel, framer: framer)
        self.clock = clock
        self.logger = logger
        dma = DMATable(maxWindows: Limits.maxDMAMaps)
        interrupts = InterruptState(irqs: host.irqs, requestLine: host.requestLine)
        regionSize = host.regions.map(\.size)
        regionAccess = host.regions.map { ($0.readable ? 1 : 0) | ($0.writable ? 2 : 0) }
        hostEvents = host.device.hasHostEvents
        model = host.device
    }

    /// Serves until the client disconnects; then releases everything the
    /// client gave (DMA windows, eventfds) and keeps the device state. A
    /// migration in progress ends with the connection: the device is back
    /// in RUNNING for the next client, as kernel VFIO drivers leave a
    /// device whose file is closed.
    public func run() {
        attach()
        defer { detach() }
        while true {
            do {
                try serve()
                return
            } catch .interrupted {
                // Between messages: the owner may hold the session here (a
                // live upgrade), then serving goes on where it stopped.
                whenInterrupted?()
            } catch {
                logEnd(error)
                return
            }
        }
    }

    /// Called on the endpoint's thread, between messages, when a signal
    /// interrupted its wait (DeviceServer parks a session this way).
    public var whenInterrupted: (() -> Void)?

    /// Connects the device to this client: interrupts and guest memory go
    /// through this endpoint from here.
    public func attach() {
        host.device.interrupts = interrupts
        host.device.dma = guestMemory
        pollIRQ = interrupts.watched
    }

    /// Releases everything the client gave (DMA windows, eventfds); the
    /// device state stays, back in RUNNING if a migration was under way.
    public func detach() {
        host.device.interrupts = nil
        host.device.dma = nil
        dma.removeAll()
        interrupts.closeAll()
        transport.closeFDs()
        if host.migration.state != .running { host.backToRunning() }
    }

    /// Serves messages and host events until the channel ends (or, for a
    /// channel that cannot block, has nothing more: `.idle`).
    public func serve() throws(TransportEnd) {
        while true {
            // Most devices have nothing to poll but the socket: asked first.
            if (!pollIRQ.isEmpty || hostEvents || model.timerDeadline != nil)
                && !transport.hasBufferedMessage && !transport.hasDeferred {
                try waitForEvents()
                continue
            }
            guard let message = try nextMessage() else { continue }
            try handle(message)
        }
    }

    /// Serves what an in-memory channel holds and returns once it has
    /// nothing more (the test pushes more, advances its clock, or closes).
    /// Any other end of the channel is thrown.
    public func serveUntilIdle() throws(TransportEnd) {
        do {
            try serve()
        } catch .idle {
            return
        }
    }

    private func logEnd(_ error: TransportEnd) {
        switch error {
        case .closed: logger.debug("client disconnected")
        case .idle: logger.debug("channel idle")
        case .interrupted: logger.debug("interrupted")
        case .framing(let why): logger.notice("closing connection: \(why)")
        case .io(ETIMEDOUT): logger.notice("closing connection: the client left replies unread for \(Double(transport.channel.stallLimit) / 1e9) s")
        case .io(let e): logger.notice("closing connection: socket error \(e)")
        }
    }

    /// The next request: blocking for it, or, with polling on, asking the
    /// socket without blocking until one comes or the spin time is up.
    @inline(__always)
    private func nextMessage() throws(TransportEnd) -> InboundMessage? {
        if pollNanoseconds > 0 && !transport.hasBufferedMessage && !transport.hasDeferred {
            let deadline = clock.nanoseconds() + pollNanoseconds
            repeat {
                if let m = try transport.receive(nonBlocking: true) { return m }
            } while clock.nanoseconds() < deadline
        }
        return try transport.receive()
    }

    // MARK: Polling for host-side events

    /// Blocks until the socket, a watched eventfd or a device descriptor is
    /// ready, or the device's timer is due; services what is ready.
    private func waitForEvents() throws(TransportEnd) {
        pollSet.removeAll(keepingCapacity: true)
        pollSet.append(pollfd(fd: transport.channel.pollDescriptor, events: Int16(POLLIN), revents: 0))
        for w in pollIRQ { pollSet.append(pollfd(fd: w.fd, events: Int16(POLLIN), revents: 0)) }
        if hostEvents {
            for r in model.pollRequests() { pollSet.append(pollfd(fd: r.fd, events: r.events, revents: 0)) }
        }
        var timeout: Int64 = -1
        if let deadline = model.timerDeadline {
            let now = clock.nanoseconds()
            timeout = deadline <= now ? 0 : Int64(min(deadline - now, 1_000_000_000))
        }
        let n = try pollSet.withUnsafeMutableBufferPointer { (set) throws(TransportEnd) in try transport.channel.wait(set, timeout: timeout) }
        if n < 0 {
            if errno == EINTR { throw .interrupted }
            throw .io(errno)
        }
        for i in 1..<pollSet.count where pollSet[i].revents != 0 {
            if i - 1 < pollIRQ.count {
                let w = pollIRQ[i - 1]
                interrupts.watchedFired(fd: w.fd, index: w.index, vector: w.vector, unmask: w.unmask)
            } else {
                model.serviceEvent(fd: pollSet[i].fd, revents: pollSet[i].revents)
            }
        }
        if keepsState && n > (pollSet[0].revents != 0 ? 1 : 0) { transport.unsaved = true }
        if let deadline = model.timerDeadline, clock.nanoseconds() >= deadline {
            model.timerExpired()
        }
        if interrupts.watchedChanged { pollIRQ = interrupts.watched; interrupts.watchedChanged = false }
        // What the host side or the clock changed is saved before the next request is read.
        transport.saveIfUnsaved()
        if pollSet[0].revents != 0, let message = try transport.receive(nonBlocking: true) { try handle(message) }
    }

    // MARK: Dispatch

    /// Handles one inbound message, answering unless the client posted it.
    ///
    /// A region read or write (nearly every message a running guest sends)
    /// goes straight to `access` once VERSION is done: the checks
    /// `Request.decode` and `handleMessage` would make of it are made, on
    /// the header, the framing and the payload, without building a
    /// `Request`. Anything else, and any access those checks refuse, takes
    /// the general path, which refuses it in the same words.
    @inline(__always)
    func handle(_ m: InboundMessage) throws(TransportEnd) {
        if keepsState { noteArrival(m) }
        let h = m.header
        if client != nil && h.isPlainCommand && m.fdCount == 0 && !m.fdOverflow && !m.oversized {
            if h.command == Command.regionRead.rawValue, let a = try? RegionAccess.read(m.payload) {
                try access(a, write: false, header: h)
                return transport.saveIfUnsaved()
            }
            if h.command == Command.regionWrite.rawValue, let a = try? RegionAccess.write(m.payload) {
                try access(a, write: true, header: h)
                return transport.saveIfUnsaved()
            }
        }
        try handleOther(m)
    }

    /// Every message but a well-formed region access: decoded into a
    /// `Request`, routed, refused as `handleMessage` says. Out of line, so
    /// that the access path does not carry its frame.
    @inline(never)
    private func handleOther(_ m: InboundMessage) throws(TransportEnd) {
        try handleMessage(m, on: transport, policy: .full, negotiated: client != nil, fdLimit: fdLimit, logger: logger) { request, h, fdCount in
            try route(request, header: h, fdCount: fdCount)
        }
        // A posted request's change (no reply to save it before).
        transport.saveIfUnsaved()
    }

    /// Serves a region read or write whose message is well formed: checks
    /// the access against the region, asks the model, answers (or refuses
    /// with the errno). The one place region accesses are served.
    @inline(__always)
    private func access(_ a: RegionAccess, write: Bool, header h: Header) throws(TransportEnd) {
        let size: Int
        do { size = try checkAccess(a, write: write) } catch { return try refuse(h, error, on: transport, logger: logger) }
        // Every write is recorded (even of nothing: its reply waits for a save); a read only if it changes the device.
        if keepsState && (write || (size > 0 && model.readChangesState(region: Int(a.region), offset: a.offset, count: size))) {
            recordPending()
        }
        var w = MessageWriter(transport.sendBuffer)
        w.u64(a.offset); w.u32(a.region); w.u32(a.count)
        if size > 0 {
            let e = write ? model.write(region: Int(a.region), offset: a.offset, data: a.data)
                          : model.read(region: Int(a.region), offset: a.offset, into: w.space(size))
            guard e == 0 else {
                return try refuse(h, ProtocolError(e, write ? "device refused the write" : "device refused the read"),
                                  on: transport, logger: logger)
            }
        }
        try reply(w, to: h)
    }

    /// With state kept: a request that changes the device or the connection
    /// (anything but a read and the queries) marks the state unsaved, so
    /// that its reply, even an error, waits for a save; `recordPending`
    /// records a read or write once it is checked.
    @inline(never)
    private func noteArrival(_ m: InboundMessage) {
        arriving = m
        switch Command(rawValue: m.header.command) {
        case .regionRead?, .deviceGetInfo?, .deviceGetRegionInfo?, .deviceGetRegionIOFDs?, .deviceGetIRQInfo?,
             .queryGfxPlane?, .getGfxDmabuf?, .dirtyPages?:
            break
        default:
            transport.unsaved = true
        }
    }

    /// The message being handled, while state is kept (`noteArrival`).
    @exclusivity(unchecked) private var arriving: InboundMessage?

    /// A checked region write, or a checked read that changes the device (an
    /// mtty's RBR, IIR, LSR), is recorded before it is handled
    /// (`Transport.notePending`): a crash before its state is saved does not
    /// lose it. Its reply then waits for that save, so that a record is never
    /// handled twice. Requests with descriptors are not recorded.
    @inline(never)
    private func recordPending() {
        transport.unsaved = true
        guard let m = arriving, m.fdCount == 0, !m.oversized, !transport.hasDeferred, m.header.isCommand,
              let note = transport.notePending, let bytes = transport.framer.bytes(from: m) else { return }
        note(bytes)
    }

    /// Whether a state keeper watches this endpoint (`Transport.saveBeforeReply`):
    /// only then is a read asked whether it changes the device.
    @exclusivity(unchecked) public var keepsState = false

    /// The reply flags for a success.
    private static var replyFlags: UInt32 { Header.typeReply }

    @inline(__always)
    private func reply(_ w: MessageWriter, to h: Header) throws(TransportEnd) {
        transport.saveIfUnsaved()
        guard h.wantsReply else { return }
        let n = w.finish(messageID: h.messageID, command: h.command, flags: Endpoint.replyFlags)
        try transport.send(length: n)
    }


    private func route(_ request: Request, header h: Header, fdCount: Int) throws {
        var w = MessageWriter(transport.sendBuffer)
        switch request {
        case .regionRead(let a):
            // `handle` serves well-formed accesses itself; the checks this
            // path adds refuse the rest before here.
            try access(a, write: false, header: h)

        case .regionWrite(let a):
            try access(a, write: true, header: h)

        case .regionWriteMulti(let count, let entries):
            if keepsState { recordPending() }
            for i in 0..<count {
                let base = i * 24
                let c = entries.u32(base + 12)
                let a = RegionAccess(offset: entries.u64(base), region: entries.u32(base + 8), count: c,
                                     data: UnsafeRawBufferPointer(rebasing: entries[(base + 16)..<(base + 16 + Int(c))]))
                _ = try checkAccess(a, write: true)
                let e = model.write(region: Int(a.region), offset: a.offset, data: a.data)
                guard e == 0 else { throw ProtocolError(e, "device refused the write") }
            }
            w.u64(UInt64(count))
            try reply(w, to: h)

        case .version(_, _, let caps):
            let answer = try Capabilities.serverReply(to: caps, offersMigration: host.device.migrationIdentity != nil)
            answer.encodeVersionReply(&w)
            client = caps
            dma.maxWindows = answer.maxDMAMaps
            fdLimit = answer.maxMessageFDs
            try reply(w, to: h)

        case .dmaMap(let m):
            try dma.map(m, fd: fdCount == 1 ? transport.takeFD(0) : nil)
            try reply(w, to: h)

        case .dmaUnmap(let u):
            if u.flags & VFIO.dmaUnmapAll != 0 { dma.removeAll() } else { try dma.unmap(address: u.address, size: u.size) }
            u.encode(&w)
            try reply(w, to: h)

        case .deviceGetInfo, .deviceGetRegionInfo, .deviceGetRegionIOFDs, .deviceGetIRQInfo, .queryGfxPlane, .getGfxDmabuf:
            _ = try host.description.answerQuery(request, header: h, gfx: client?.gfxPlane != nil, writer: &w, transport: transport)

        case .deviceSetIRQs(let s):
            try interrupts.apply(s, fds: transport.takeFDs(fdCount))
            if interrupts.watchedChanged { pollIRQ = interrupts.watched; interrupts.watchedChanged = false }
            try reply(w, to: h)

        case .deviceReset:
            guard host.device.supportsReset else { throw ProtocolError(ENOTTY, "device does not support reset") }
            host.resetDevice()
            try reply(w, to: h)

        case .dirtyPages:
            throw ProtocolError(ENOTSUP, "dirty page tracking is not supported")

        case .deviceFeature(let f):
            try deviceFeature(f, writer: &w)
            try reply(w, to: h)

        case .migDataRead(_, let size):
            let chunk = try host.migration.read(max: Int(size))
            w.u32(UInt32(8 + chunk.count)); w.u32(UInt32(chunk.count))
            chunk.withUnsafeBytes { w.bytes($0) }
            try reply(w, to: h)

        case .migDataWrite(_, _, let data):
            try host.migration.write(data)
            try reply(w, to: h)
        }
    }

    /// Range-checks a region access; returns the byte count.
    @inline(__always)
    private func checkAccess(_ a: RegionAccess, write: Bool) throws(ProtocolError) -> Int {
        let i = Int(a.region)
        guard i < regionSize.count else { throw .invalid("region index out of range") }
        guard regionAccess[i] & (write ? 2 : 1) != 0 else { throw .invalid("region does not allow this access") }
        let size = regionSize[i]
        guard a.offset <= size, UInt64(a.count) <= size - a.offset else { throw .invalid("access beyond the end of the region") }
        return Int(a.count)
    }

    // MARK: DEVICE_FEATURE

    private func deviceFeature(_ f: DeviceFeature, writer w: inout MessageWriter) throws(ProtocolError) {
        guard let identity = host.device.migrationIdentity else { throw ProtocolError(ENOTTY, "device does not support migration") }
        switch f.feature {
        case VFIO.featureMigration:
            guard !f.isSet else { throw .invalid("MIGRATION feature cannot be SET") }
            if f.isProbe { w.u32(8); w.u32(f.flags); return }
            guard f.argsz >= 16 else { throw .invalid("argsz too small for the MIGRATION feature") }
            w.u32(16); w.u32(f.flags); w.u64(VFIO.migrationStopCopy | VFIO.migrationPreCopy)
        case VFIO.featureMigDeviceState:
            if f.isProbe { w.u32(8); w.u32(f.flags); return }
            guard f.argsz >= 16 else { throw .invalid("argsz too small for MIG_DEVICE_STATE") }
            if f.isSet {
                guard f.data.count >= 8 else { throw .invalid("MIG_DEVICE_STATE SET without a state") }
                guard let target = DeviceState(rawValue: f.data.u32(0)) else { throw .invalid("unknown device state") }
                do {
                    try host.migration.transition(to: target, device: host.device)
                } catch {
                    if let why = host.migration.lastRefusal { logger.notice("migration state refused: \(why)") }
                    throw error
                }
            }
            w.u32(16); w.u32(f.flags); w.u32(host.migration.state.rawValue); w.u32(UInt32(bitPattern: -1))
        case VFIO.featureMigDataSize:
            guard !f.isSet else { throw .invalid("MIG_DATA_SIZE cannot be SET") }
            if f.isProbe { w.u32(8); w.u32(f.flags); return }
            guard f.argsz >= 16 else { throw .invalid("argsz too small for MIG_DATA_SIZE") }
            let estimate = MigrationMachine.preamble(identity).count + 4 + host.device.saveState().count
            w.u32(16); w.u32(f.flags); w.u64(UInt64(estimate))
        case VFIO.featureDMALoggingStart, VFIO.featureDMALoggingStop, VFIO.featureDMALoggingReport:
            throw ProtocolError(ENOTTY, "DMA dirty logging is not supported")
        default:
            throw ProtocolError(ENOTTY, "unknown device feature")
        }
    }

    // MARK: Server-initiated DMA

    /// Sends DMA_READ/DMA_WRITE to the client and waits for its reply,
    /// deferring any command that arrives meanwhile.
    fileprivate func clientDMA(write: Bool, iova: UInt64, buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) {
        let limit = max(1, min(client?.maxDataTransferSize ?? 1 << 20, Limits.maxDataTransfer))
        var done = 0
        while done < buffer.count {
            let n = min(limit, buffer.count - done)
            nextRequestID &+= 1
            let id = nextRequestID
            let command: Command = write ? .dmaWrite : .dmaRead
            var w = MessageWriter(transport.sendBuffer)
            w.u64(iova + UInt64(done)); w.u64(UInt64(n))
            if write { w.bytes(UnsafeRawBufferPointer(rebasing: buffer[done..<(done + n)])) }
            let length = w.finish(messageID: id, command: command.rawValue, flags: Header.typeCommand)
            do {
                try transport.send(length: length)
                while true {
                    let received: InboundMessage?
                    // Mid-request: an interruption only retries the read; the
                    // session stops for an upgrade after this request.
                    do { received = try transport.receive(includeDeferred: false) } catch .interrupted { continue }
                    guard let m = received else { continue }
                    if m.header.isReply && m.header.messageID == id && m.header.command == command.rawValue {
                        if m.header.isError { throw DeviceError(Int32(m.header.error), "client refused \(command.name)") }
                        if !write {
                            guard m.payload.count == 16 + n, m.payload.u64(8) == UInt64(n) else {
                                throw DeviceError(EIO, "malformed DMA_READ reply")
                            }
                            (buffer.baseAddress! + done).copyMemory(from: m.payload.baseAddress! + 16, byteCount: n)
                        }
                        break
                    }
                    if m.header.isReply { continue } // stray reply: drop
                    transport.deferMessage(m)
                }
            } catch let e as DeviceError {
                throw e
            } catch {
                throw DeviceError(EIO, "connection failed during DMA")
            }
            done += n
        }
    }
}

/// Guest memory as the device sees it: mmapped windows directly, the rest
/// through DMA_READ/DMA_WRITE messages.
final class GuestMemory<Channel: MessageChannel, Clock: MonotonicClock>: DMAAccess {
    unowned let endpoint: Endpoint<Channel, Clock>
    init(endpoint: Endpoint<Channel, Clock>) { self.endpoint = endpoint }

    func read(iova: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DeviceError) {
        guard buffer.count > 0 else { return }
        guard let w = endpoint.dma.window(containing: iova, count: buffer.count), w.readable else {
            throw DeviceError(EFAULT, "IOVA range not mapped readable")
        }
        if let p = w.mapping {
            // The client may have truncated the file behind the window: a
            // copy from the lost pages fails instead of killing the process.
            guard umdev_guarded_copy(buffer.baseAddress!, p + Int(iova - w.address), buffer.count) == 0 else {
                throw DeviceError(EFAULT, "guest memory behind the window is gone (the client shrank its file)")
            }
        } else {
            try endpoint.clientDMA(write: false, iova: iova, buffer: buffer)
        }
    }

    func write(iova: UInt64, from data: UnsafeRawBufferPointer) throws(DeviceError) {
        guard data.count > 0 else { return }
        guard let w = endpoint.dma.window(containing: iova, count: data.count), w.writable else {
            throw DeviceError(EFAULT, "IOVA range not mapped writable")
        }
        if let p = w.mapping {
            guard umdev_guarded_copy(p + Int(iova - w.address), data.baseAddress!, data.count) == 0 else {
                throw DeviceError(EFAULT, "guest memory behind the window is gone (the client shrank its file)")
            }
        } else {
            try endpoint.clientDMA(write: true, iova: iova, buffer: UnsafeMutableRawBufferPointer(mutating: data))
        }
    }
}

/// DEVICE_GET_REGION_INFO's answer: the 32-byte info, then the capability
/// chain (SPARSE_MMAP for mappable regions, TYPE for typed ones), truncated
/// to what the client offered (QEMU's first ask is argsz 32).
enum RegionInfoReply {
    /// Writes the reply payload; returns the descriptor to attach, if any (the device's).
    static func encode(_ r: Region, index: UInt32, argsz: UInt32, into w: inout MessageWriter) throws(ProtocolError) -> FileDescriptor? {
        var capsLength = 0
        if let m = r.mapping { capsLength += 16 + 16 * max(1, m.areas.count) }
        if r.type != nil { capsLength += 16 }
        let needed = 32 + capsLength
        var flags: UInt32 = 0
        if r.readable { flags |= VFIO.regionFlagRead }
        if r.writable { flags |= VFIO.regionFlagWrite }
        if r.mapping != nil { flags |= VFIO.regionFlagMmap }
        let fits = Int(argsz) >= needed
        if capsLength > 0 && fits { flags |= VFIO.regionFlagCaps }
        w.u32(UInt32(needed)); w.u32(flags); w.u32(index)
        w.u32(capsLength > 0 && fits ? 32 : 0)
        w.u64(r.size); w.u64(r.mapping?.fileOffset ?? 0)
        guard fits, capsLength > 0 else { return nil }
        if let m = r.mapping {
            let areas = m.areas.isEmpty ? [Region.Area(offset: 0, size: r.size)] : m.areas
            // The TYPE capability, if any, follows the sparse areas.
            let next = r.type != nil ? UInt32(32 + 16 + 16 * areas.count) : 0
            w.u16(VFIO.regionCapSparseMmap); w.u16(1); w.u32(next)
            w.u32(UInt32(areas.count)); w.u32(0)
            for a in areas { w.u64(a.offset); w.u64(a.size) }
        }
        if let t = r.type {
            w.u16(VFIO.regionCapType); w.u16(1); w.u32(0)
            w.u32(t.type); w.u32(t.subtype)
        }
        return r.mapping?.fd
    }
}

/// The endpoint the server runs: a UNIX socket and CLOCK_MONOTONIC.
public typealias SocketEndpoint = Endpoint<SocketChannel, SystemClock>

extension Endpoint where Channel == SocketChannel, Clock == SystemClock {
    /// Serves `host` on the connected `socket` (not closed here).
    /// `stallTimeout`: how long a client may leave replies unread (its
    /// socket buffer full) before the connection is dropped.
    /// `framer`: a fresh one, or one resuming a handed-over connection.
    public convenience init(host: DeviceHost, socket: Int32, framer: MessageFramer = MessageFramer(), logger: Logger,
                            stallTimeout: Double = 5, pollMicroseconds: Int = 0) {
        self.init(host: host, channel: SocketChannel(socket: socket, stallLimit: UInt64(max(0.01, stallTimeout) * 1e9)),
                  framer: framer, clock: SystemClock(), logger: logger, pollMicroseconds: pollMicroseconds)
    }
}
