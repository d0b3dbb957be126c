/// A 16550A UART as a plain state machine: registers in, registers out, no
/// sockets, no syscalls. Time is passed in (nanoseconds, any monotonic
/// origin) because the receive timeout depends on it.
///
/// Shape after rust-vmm's vm-superio serial.rs; register semantics per the
/// National Semiconductor PC16550D datasheet. Where this differs from the
/// Linux mtty sample (samples/vfio-mdev/mtty.c), the sample is the one that
/// is wrong; the differences are listed in Samples/MTTY/README.md.
public struct UART16550: Sendable, Equatable {
    // MARK: Register offsets (DLAB = 0 unless noted)
    public enum Register {
        public static let data = 0          // RBR (read) / THR (write); DLL with DLAB
        public static let interruptEnable = 1 // IER; DLM with DLAB
        public static let interruptIdentification = 2 // IIR (read) / FCR (write)
        public static let lineControl = 3   // LCR
        public static let modemControl = 4  // MCR
        public static let lineStatus = 5    // LSR
        public static let modemStatus = 6   // MSR
        public static let scratch = 7       // SCR
    }

    // IER bits
    public static let ierReceivedData: UInt8 = 0x01
    public static let ierTransmitEmpty: UInt8 = 0x02
    public static let ierLineStatus: UInt8 = 0x04
    public static let ierModemStatus: UInt8 = 0x08

    // IIR values (bits 3..0) and the FIFO-enabled signature (bits 7..6)
    public static let iirNone: UInt8 = 0x01
    public static let iirModemStatus: UInt8 = 0x00
    public static let iirTransmitEmpty: UInt8 = 0x02
    public static let iirReceivedData: UInt8 = 0x04
    public static let iirLineStatus: UInt8 = 0x06
    public static let iirTimeout: UInt8 = 0x0c
    public static let iirFIFOEnabled: UInt8 = 0xc0

    // FCR bits
    public static let fcrEnable: UInt8 = 0x01
    public static let fcrClearReceive: UInt8 = 0x02
    public static let fcrClearTransmit: UInt8 = 0x04

    // LCR / MCR / LSR / MSR bits
    public static let lcrDLAB: UInt8 = 0x80
    public static let mcrDTR: UInt8 = 0x01, mcrRTS: UInt8 = 0x02, mcrOut1: UInt8 = 0x04, mcrOut2: UInt8 = 0x08, mcrLoop: UInt8 = 0x10
    public static let lsrDataReady: UInt8 = 0x01, lsrOverrun: UInt8 = 0x02
    public static let lsrTHREmpty: UInt8 = 0x20, lsrTransmitterEmpty: UInt8 = 0x40
    public static let msrCTS: UInt8 = 0x10, msrDSR: UInt8 = 0x20, msrRI: UInt8 = 0x40, msrDCD: UInt8 = 0x80
    public static let msrDeltas: UInt8 = 0x0f

    public static let fifoSize = 16
    /// FCR bits 7:6 → receive trigger level.
    public static let triggerLevels = [1, 4, 8, 14]

    // MARK: State (all of it is what a snapshot saves)

    public var ier: UInt8 = 0
    public var lcr: UInt8 = 0
    public var mcr: UInt8 = 0
    public var scr: UInt8 = 0
    public var fcr: UInt8 = 0
    public var divisor: UInt16 = 0
    /// Line status error bits waiting to be read (OE).
    public var lsrErrors: UInt8 = 0
    /// Modem status: the line bits (high nibble) and unread deltas (low nibble).
    public var msr: UInt8 = UART16550.msrDCD | UART16550.msrDSR | UART16550.msrCTS
    /// THR-empty interrupt condition, cleared by an IIR read that reports it or a THR write.
    public var transmitEmptyPending = false
    /// Receive FIFO (oldest first). Holds up to 16 bytes with FIFOs enabled, 1 without.
    public var receive: [UInt8] = []
    /// Last receive-side activity (byte received or RBR read), for the character timeout.
    public var lastReceiveActivity: UInt64 = 0

    public init() { receive.reserveCapacity(UART16550.fifoSize) }

    /// Bytes the receive FIFO holds at most in the current mode.
    public var receiveCapacity: Int { fifoEnabled ? UART16550.fifoSize : 1 }
    public var fifoEnabled: Bool { fcr & UART16550.fcrEnable != 0 }
    public var triggerLevel: Int { fifoEnabled ? UART16550.triggerLevels[Int(fcr >> 6)] : 1 }
    public var loopback: Bool { mcr & UART16550.mcrLoop != 0 }
    var dlab: Bool { lcr & UART16550.lcrDLAB != 0 }

    /// Four character times at the programmed baud rate (10 bits a character,
    /// 115200 / divisor baud): the receive timeout of the 16550.
    public var characterTimeout: UInt64 {
        let d = UInt64(max(divisor, 1))
        return 40 * 1_000_000_000 * d / 115_200
    }

    // MARK: Receive side

    /// A byte arrives from the line. Returns false (and flags an overrun) when the FIFO is full.
    @discardableResult
    public mutating func receive(_ byte: UInt8, now: UInt64) -> Bool {
        lastReceiveActivity = now
        guard receive.count < receiveCapacity else {
            lsrErrors |= UART16550.lsrOverrun
            return false
        }
        receive.append(byte)
        return true
    }

    /// Room left in the receive FIFO.
    public var receiveSpace: Int { receiveCapacity - receive.count }

    /// When the receive timeout will expire, if data waits below the trigger level.
    public var timeoutDeadline: UInt64? {
        guard fifoEnabled, !receive.isEmpty, receive.count < triggerLevel else { return nil }
        return lastReceiveActivity + characterTimeout
    }

    // MARK: Guest access

    /// What the guest reads at `offset` (0–7). `transmit` is not used on reads.
    public mutating func read(_ offset: Int, now: UInt64) -> UInt8 {
        switch offset {
        case Register.data:
            if dlab { return UInt8(divisor & 0xff) }
            guard !receive.isEmpty else { return 0 }
            lastReceiveActivity = now
            return receive.removeFirst()
        case Register.interruptEnable:
            return dlab ? UInt8(divisor >> 8) : ier
        case Register.interruptIdentification:
            let id = identification(now: now)
            if id == UART16550.iirTransmitEmpty { transmitEmptyPending = false }
            return id | (fifoEnabled ? UART16550.iirFIFOEnabled : 0)
        case Register.lineControl:
            return lcr
        case Register.modemControl:
            return mcr
        case Register.lineStatus:
            var v = lsrErrors | UART16550.lsrTHREmpty | UART16550.lsrTransmitterEmpty
            if !receive.isEmpty { v |= UART16550.lsrDataReady }
            lsrErrors = 0
            return v
        case Register.modemStatus:
            let v = modemStatus
            msr &= ~UART16550.msrDeltas
            return v
        case Register.scratch:
            return scr
        default:
            return 0xff
        }
    }

    /// The guest writes `value` at `offset`. A byte transmitted on THR is
    /// returned so the caller can hand it to the line (or, in MCR loopback,
    /// it has already been received).
    public mutating func write(_ offset: Int, _ value: UInt8, now: UInt64) -> UInt8? {
        switch offset {
        case Register.data:
            if dlab { divisor = divisor & 0xff00 | UInt16(value); return nil }
            transmitEmptyPending = ier & UART16550.ierTransmitEmpty != 0 // the THR is empty again at once
            if loopback {
                receive(value, now: now)
                return nil
            }
            return value
        case Register.interruptEnable:
            if dlab { divisor = divisor & 0x00ff | UInt16(value) << 8; return nil }
            let newlyTHRE = value & UART16550.ierTransmitEmpty != 0 && ier & UART16550.ierTransmitEmpty == 0
            ier = value & 0x0f
            if newlyTHRE { transmitEmptyPending = true }
            if ier & UART16550.ierTransmitEmpty == 0 { transmitEmptyPending = false }
        case Register.interruptIdentification:
            let wasEnabled = fifoEnabled
            fcr = value & 0xc9 // keep enable, DMA mode and trigger bits
            if wasEnabled != fifoEnabled || value & UART16550.fcrClearReceive != 0 { receive.removeAll(keepingCapacity: true) }
            if receive.count > receiveCapacity { receive.removeFirst(receive.count - receiveCapacity) }
        case Register.lineControl:
            lcr = value
        case Register.modemControl:
            let old = modemStatus
            mcr = value & 0x1f
            noteModemChange(from: old)
        case Register.scratch:
            scr = value
        default:
            break // LSR and MSR are read-only
        }
        return nil
    }

    /// Modem status as the guest sees it: in loopback the outputs feed the inputs.
    var modemStatus: UInt8 {
        guard loopback else { return msr }
        var lines: UInt8 = 0
        if mcr & UART16550.mcrRTS != 0 { lines |= UART16550.msrCTS }
        if mcr & UART16550.mcrDTR != 0 { lines |= UART16550.msrDSR }
        if mcr & UART16550.mcrOut1 != 0 { lines |= UART16550.msrRI }
        if mcr & UART16550.mcrOut2 != 0 { lines |= UART16550.msrDCD }
        return lines | (msr & UART16550.msrDeltas)
    }

    private mutating func noteModemChange(from old: UInt8) {
        let new = modemStatus
        var delta: UInt8 = 0
        if (old ^ new) & UART16550.msrCTS != 0 { delta |= 0x01 }
        if (old ^ new) & UART16550.msrDSR != 0 { delta |= 0x02 }
        if old & UART16550.msrRI != 0 && new & UART16550.msrRI == 0 { delta |= 0x04 } // trailing edge of RI
        if (old ^ new) & UART16550.msrDCD != 0 { delta |= 0x08 }
        msr |= delta
    }

    /// The single highest-priority pending interrupt (IIR bits 3..0), without side effects.
    public func identification(now: UInt64) -> UInt8 {
        if ier & UART16550.ierLineStatus != 0 && lsrErrors != 0 { return UART16550.iirLineStatus }
        if ier & UART16550.ierReceivedData != 0 {
            if receive.count >= triggerLevel { return UART16550.iirReceivedData }
            if let deadline = timeoutDeadline, now >= deadline { return UART16550.iirTimeout }
        }
        if ier & UART16550.ierTransmitEmpty != 0 && transmitEmptyPending { return UART16550.iirTransmitEmpty }
        if ier & UART16550.ierModemStatus != 0 && modemStatus & UART16550.msrDeltas != 0 { return UART16550.iirModemStatus }
        return UART16550.iirNone
    }

    /// Whether the UART asserts its interrupt output (OUT2 gates it onto the bus on a PC;
    /// the sample ignores OUT2 and so do we, see README).
    public func interruptPending(now: UInt64) -> Bool { identification(now: now) != UART16550.iirNone }
}
