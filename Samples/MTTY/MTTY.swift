import Glibc
import PCI

/// The Linux mtty sample (samples/vfio-mdev/mtty.c): a PCI serial card with
/// one or two 16550A ports, each behind an 8-byte I/O BAR, sharing INTx.
///
/// As the guest sees it, the identity matches the sample so Linux's stock
/// 8250_pci binds (WCH CH352 2S, board pbn_b0_bt_2_115200). Differences
/// from the sample are listed in Samples/MTTY/README.md.
public final class MTTY: VFIODevice, HostResourceHolder {
    // MARK: Identity (mtty.c: mtty_create_config_space)
    public static let vendorID: UInt16 = 0x4348       // WCH
    public static let deviceID: UInt16 = 0x3253       // CH352 2S
    public static let classCode: UInt32 = 0x070002    // serial controller, 16550-compatible
    public static let revision: UInt8 = 0x10
    /// Opaque bytes the sample puts in the vendor area, and its ASCII tag.
    static let vendorFiller: [(Int, UInt8)] = [(0x40, 0x23), (0x43, 0x80), (0x44, 0x23), (0x48, 0x23), (0x4c, 0x23)]
    static let tag = Array("PCI Serial/UART".utf8)
    static let stateMagic = "MTTY"
    /// 2 adds how long ago each port last received, so a receive timeout
    /// pending at save time fires on time after restore; 1 is still read.
    public static let stateVersion = 2
    public static let model = "umdev.mtty"


    public let portCount: Int
    /// The UARTs, one per port. Held in memory of the device's own, not an
    /// array: every register access reaches one, and an array would ask
    /// whether its buffer is shared before each mutation. Indices are
    /// checked against `portCount` before use.
    private let port: UnsafeMutablePointer<UART16550>
    /// The ports' state, as a copy (tests, snapshots).
    public var ports: [UART16550] { Array(UnsafeBufferPointer(start: port, count: portCount)) }
    @exclusivity(unchecked) public private(set) var config = ConfigSpace()
    private let initialConfig: ConfigSpace
    private let lines: [HostLine?]
    private let clock: () -> UInt64
    /// The level last reported on INTx, so only changes are sent.
    @exclusivity(unchecked) private var intxLevel = false
    @exclusivity(unchecked) private var running = true
    /// What `pollRequests` answers, reused from one ask to the next.
    @exclusivity(unchecked) private var pollSet: [(fd: Int32, events: Int16)] = []

    public let regions: [Region]
    /// INTx (maskable, automasked), and MSI with one vector as the sample reports at the VFIO level.
    /// ERR and REQ as kernel vfio-pci offers them (QEMU wires both; REQ asks the VMM to let the device go).
    public let irqs: [IRQ] = [.intx, IRQ(count: 1, noResize: true), .none, .error, .request]
    /// Unlike the sample, reset is advertised and implemented.
    public let supportsReset = true
    /// Set by the server when a client attaches; the line's current level is
    /// announced to the new sink so an interrupt pending across a reconnect is kept.
    public weak var interrupts: InterruptSink? {
        didSet {
            intxLevel = false
            updateInterrupt(now: clock())
        }
    }
    public weak var dma: DMAAccess?
    public let hasHostEvents: Bool
    public var migrationIdentity: MigrationIdentity? { Self.migrationIdentity(ports: portCount) }
    public var readableStateVersions: ClosedRange<Int> { Self.readableStateVersions }

    /// What an mtty with `ports` ports puts in its migration streams: the
    /// one place the catalog and a resume both read it from.
    public static func migrationIdentity(ports: Int) -> MigrationIdentity {
        MigrationIdentity(model: model, version: stateVersion, type: "mtty-\(ports)", parameters: ["ports": "\(ports)"])
    }
    /// The state versions this build reads (v1 streams predate the idle time).
    public static let readableStateVersions = 1...stateVersion

    /// `ports`: 1 (mtty-1) or 2 (mtty-2). `backends`: per port; missing ones are loopback.
    public init(ports: Int, backends: [SerialBackend] = [], clock: @escaping () -> UInt64 = monotonicNanoseconds) throws(DeviceError) {
        precondition(ports == 1 || ports == 2)
        portCount = ports
        port = .allocate(capacity: ports)
        port.initialize(repeating: UART16550(), count: ports)
        self.clock = clock
        var made: [HostLine?] = []
        for i in 0..<ports {
            let kind = i < backends.count ? backends[i] : .loopback
            made.append(kind == .loopback ? nil : try HostLine(kind, port: i))
        }
        lines = made
        hasHostEvents = made.contains { $0 != nil }
        pollSet.reserveCapacity(ports)

        config.setIdentity(vendor: Self.vendorID, device: Self.deviceID, subsystemVendor: Self.vendorID,
                           subsystem: Self.deviceID, classCode: Self.classCode, revision: Self.revision)
        config.set16(ConfigSpace.Offset.command, ConfigSpace.CommandBit.io)
        config.set16(ConfigSpace.Offset.status, ConfigSpace.StatusBit.devselMedium)
        for p in 0..<ports { config.setBAR(p, BAR(.io, size: 8)) }
        config.setInterruptPin(1)
        for (offset, byte) in Self.vendorFiller { config.setBytes(offset, [byte]) }
        config.setBytes(0x60, Self.tag)
        initialConfig = config

        var r = [Region](repeating: .absent, count: 9)
        for p in 0..<ports { r[p] = Region(size: 8) }
        r[7] = Region(size: 256)
        regions = r
    }

    deinit {
        port.deinitialize(count: portCount)
        port.deallocate()
    }

    /// Where each port's host side is (pty path, socket path), nil for loopback.
    public var backendNames: [String?] { lines.map { $0?.name } }

    /// The pty and socket lines, for a live upgrade (`HostResourceHolder`).
    public func hostResources() -> [HostResource] {
        lines.enumerated().compactMap { p, line in
            line.map { l in
                let r = l.hostResource
                return HostResource(key: "port\(p)", descriptors: r.descriptors, data: r.data)
            }
        }
    }

    // MARK: Region access

    public func read(region: Int, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: buffer.count) else { return EINVAL }
        if region == RegionIndex.config {
            config.read(offset: Int(offset), into: buffer)
            return 0
        }
        guard region < portCount else { return EINVAL }
        // Byte registers: wider reads return one register per byte. Reading
        // IER, LCR, MCR or SCR changes nothing, needs no time and leaves the
        // interrupt line as it was; only RBR, IIR, LSR and MSR ask the clock.
        let changes = readChangesState(region: region, offset: offset, count: buffer.count)
        let now = changes ? clock() : 0
        for i in 0..<buffer.count { buffer[i] = port[region].read(Int(offset) + i, now: now) }
        if changes { updateInterrupt(now: now) }
        return 0
    }

    /// Config space reads change nothing; of a port's registers, reading
    /// RBR (pops the FIFO), IIR (clears a THRE interrupt), LSR (clears the
    /// error bits) and MSR (clears the deltas) does.
    @inline(__always)
    public func readChangesState(region: Int, offset: UInt64, count: Int) -> Bool {
        region != RegionIndex.config && count > 0 && Self.registers(offset: offset, count: count) & Self.readsWithEffects != 0
    }

    /// One bit per port register in [offset, offset + count); every bit when
    /// the range is not within the eight registers (so that a caller asking
    /// about effects assumes the worst).
    @inline(__always)
    private static func registers(offset: UInt64, count: Int) -> UInt32 {
        guard offset < 8, count >= 0, count <= 8 else { return .max }
        return ((1 &<< UInt32(count)) &- 1) &<< UInt32(offset)
    }

    /// RBR, IIR, LSR and MSR, as register bits.
    private static let readsWithEffects: UInt32 = 1 << UART16550.Register.data | 1 << UART16550.Register.interruptIdentification
        | 1 << UART16550.Register.lineStatus | 1 << UART16550.Register.modemStatus

    public func write(region: Int, offset: UInt64, data: UnsafeRawBufferPointer) -> Int32 {
        guard accessible(region: region, offset: offset, count: data.count) else { return EINVAL }
        if region == RegionIndex.config {
            config.write(offset: Int(offset), data: data)
            return 0
        }
        guard region < portCount else { return EINVAL }
        // Writing LCR or SCR changes no interrupt condition and no timeout
        // (the divisor does, but it is written at 0 and 1): no clock, no
        // interrupt update.
        let changes = Self.registers(offset: offset, count: data.count) & ~Self.writesWithoutEffects != 0
        let now = changes ? clock() : 0
        for i in 0..<data.count {
            if let byte = port[region].write(Int(offset) + i, data[i], now: now) { transmit(byte, port: region, now: now) }
        }
        if changes { updateInterrupt(now: now) }
        return 0
    }

    /// LCR and SCR, as register bits.
    private static let writesWithoutEffects: UInt32 = 1 << UART16550.Register.lineControl | 1 << UART16550.Register.scratch

    /// A byte the guest sent: queued for the host line, or back to the
    /// receiver (the sample's echo). Never a syscall: the host line writes
    /// it when the owner thread services POLLOUT (`serviceEvent`). What the
    /// guest sees (THRE, TEMT, the THRE interrupt) is the UART's doing and
    /// does not wait for the host to take the byte.
    private func transmit(_ byte: UInt8, port: Int, now: UInt64) {
        if let line = lines[port] {
            line.send(byte)
        } else {
            self.port[port].receive(byte, now: now)
        }
    }

    /// Drives the shared INTx line from the ports' interrupt outputs, and
    /// works out the next receive timeout. Runs after everything that
    /// changes a port (a write, a read with a side effect, host input, a
    /// timer, reset, restore, a new sink), so both stay current without
    /// being asked on every message.
    private func updateInterrupt(now: UInt64) {
        var level = false
        for p in 0..<portCount where port[p].interruptPending(now: now) { level = true; break }
        timerDeadline = level ? nil : earliestTimeout()
        guard level != intxLevel else { return }
        intxLevel = level
        interrupts?.setINTxLevel(level)
        if level { interrupts?.trigger(.msi, vector: 0) }
    }

    /// The earliest receive timeout among ports with RX interrupts on.
    private func earliestTimeout() -> UInt64? {
        var earliest: UInt64?
        for p in 0..<portCount where port[p].ier & UART16550.ierReceivedData != 0 {
            if let d = port[p].timeoutDeadline, d < (earliest ?? .max) { earliest = d }
        }
        return earliest
    }

    // MARK: Host side

    /// Asked before every wait of the owner thread. Built in a kept array:
    /// the caller has let go of the last answer by the next ask, so this
    /// allocates nothing after the first.
    public func pollRequests() -> [(fd: Int32, events: Int16)] {
        pollSet.removeAll(keepingCapacity: true)
        for (p, line) in lines.enumerated() {
            guard let r = line?.pollRequest else { continue }
            // Stop reading while the receive FIFO is full or the device is stopped.
            let wantsInput = running && port[p].receiveSpace > 0
            let events = r.events & ~(wantsInput ? 0 : Int16(POLLIN))
            if events != 0 { pollSet.append((r.fd, events)) }
        }
        return pollSet
    }

    public func serviceEvent(fd: Int32, revents: Int16) {
        let now = clock()
        for (p, line) in lines.enumerated() {
            guard let line else { continue }
            let space = running ? port[p].receiveSpace : 0
            for byte in line.service(fd: fd, revents: revents, space: space) { port[p].receive(byte, now: now) }
        }
        updateInterrupt(now: now)
    }

    /// The earliest receive timeout among ports with RX interrupts on, while
    /// the line is low; read by the server after every message, so it is
    /// kept (`updateInterrupt`) rather than worked out on each ask.
    @exclusivity(unchecked) public private(set) var timerDeadline: UInt64?

    public func timerExpired() { updateInterrupt(now: clock()) }

    public func setRunning(_ running: Bool) { self.running = running }

    // MARK: Lifecycle

    public func reset() {
        for p in 0..<portCount { port[p] = UART16550() }
        config = initialConfig
        running = true
        updateInterrupt(now: clock())
    }

    /// Versioned state (StateWriter): "MTTY", u16 version, u8 port count,
    /// then per port the registers, the pending THRE condition, the receive
    /// FIFO and (version 2) nanoseconds since it last received; then the
    /// 256-byte config space. Interrupt state follows from the registers.
    public func saveState() -> [UInt8] {
        var w = StateWriter(magic: Self.stateMagic, version: Self.stateVersion)
        w.u8(UInt8(portCount))
        let now = clock()
        for u in UnsafeBufferPointer(start: port, count: portCount) {
            for v in [u.ier, u.lcr, u.mcr, u.scr, u.fcr] { w.u8(v) }
            w.u16(u.divisor)
            for v in [u.lsrErrors, u.msr, u.transmitEmptyPending ? 1 : 0, UInt8(u.receive.count)] { w.u8(v) }
            w.raw(u.receive + [UInt8](repeating: 0, count: UART16550.fifoSize - u.receive.count))
            w.u64(now >= u.lastReceiveActivity ? now - u.lastReceiveActivity : 0)
        }
        w.raw(config.bytes)
        return w.bytes
    }

    /// Bytes per port in a version-1 state; version 2 adds 8.
    public static let portStateSize = 11 + UART16550.fifoSize

    public func restoreState(_ s: [UInt8], version: Int) throws(DeviceError) {
        var r = try StateReader(s, magic: Self.stateMagic, what: "mtty", version: version, readable: Self.readableStateVersions)
        let count = try r.u8()
        guard Int(count) == portCount else {
            throw DeviceError(EINVAL, "state has \(count) ports, this mtty-\(portCount) has \(portCount)")
        }
        var restored: [UART16550] = []
        let now = clock()
        for _ in 0..<portCount {
            var u = UART16550()
            u.ier = try r.u8() & 0x0f; u.lcr = try r.u8(); u.mcr = try r.u8() & 0x1f; u.scr = try r.u8(); u.fcr = try r.u8() & 0xc9
            u.divisor = try r.u16()
            u.lsrErrors = try r.u8() & UART16550.lsrOverrun; u.msr = try r.u8(); u.transmitEmptyPending = try r.u8() != 0
            let held = Int(try r.u8())
            let fifo = try r.raw(UART16550.fifoSize)
            guard held <= u.receiveCapacity else { throw DeviceError(EINVAL, "mtty state holds more bytes than the FIFO") }
            u.receive = Array(fifo[0..<held])
            let idle = r.version >= 2 ? try r.u64() : 0
            u.lastReceiveActivity = now >= idle ? now - idle : 0
            restored.append(u)
        }
        let cfg = try r.raw(initialConfig.size)
        try r.finish()
        for p in 0..<portCount { port[p] = restored[p] }
        config = initialConfig
        config.setBytes(0, cfg)
        updateInterrupt(now: clock())
    }
}
