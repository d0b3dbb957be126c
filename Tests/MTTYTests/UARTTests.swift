import Testing
@testable import MTTY

@Suite("16550A register semantics")
struct UARTTests {
    typealias U = UART16550
    var now: UInt64 = 1_000_000

    func make(fcr: UInt8? = nil, ier: UInt8 = 0) -> U {
        // Builds a UART with FCR and IER programmed.
        var u = U()
        if let fcr { _ = u.write(U.Register.interruptIdentification, fcr, now: 0) }
        _ = u.write(U.Register.interruptEnable, ier, now: 0)
        return u
    }

    @Test func scratchAndLineControlStore() {
        var u = U()
        _ = u.write(7, 0xa5, now: now)
        #expect(u.read(7, now: now) == 0xa5)
        _ = u.write(3, 0x1b, now: now)
        #expect(u.read(3, now: now) == 0x1b)
    }

    @Test func divisorLatchWritesReplace() {
        var u = U()
        _ = u.write(3, 0x80, now: now)
        _ = u.write(0, 0x0c, now: now)
        _ = u.write(1, 0x00, now: now)
        _ = u.write(0, 0x01, now: now) // replaces, does not OR
        #expect(u.read(0, now: now) == 0x01 && u.read(1, now: now) == 0x00)
        #expect(u.divisor == 1)
        _ = u.write(3, 0x03, now: now)
        #expect(u.read(1, now: now) == 0) // IER again
    }

    @Test func ierKeepsFourBits() {
        var u = U()
        _ = u.write(1, 0xff, now: now)
        #expect(u.read(1, now: now) == 0x0f)
    }

    @Test func iirReportsFIFOsAndNoInterrupt() {
        var u = make()
        #expect(u.read(2, now: now) == 0x01)
        _ = u.write(2, 0x01, now: now)
        #expect(u.read(2, now: now) == 0xc1) // 16550A signature
    }

    @Test func threInterruptIsClearedByReadingIIR() {
        var u = make(ier: U.ierTransmitEmpty)
        #expect(u.read(2, now: now) & 0x0f == U.iirTransmitEmpty)
        #expect(u.read(2, now: now) & 0x0f == U.iirNone)
        // Writing THR re-arms it (the byte leaves at once).
        _ = u.write(0, 0x41, now: now)
        #expect(u.read(2, now: now) & 0x0f == U.iirTransmitEmpty)
        // Re-enabling THRI while empty re-arms it too.
        _ = u.write(1, 0, now: now)
        _ = u.write(1, U.ierTransmitEmpty, now: now)
        #expect(u.interruptPending(now: now))
    }

    @Test func iirPriorityOrder() {
        var u = make(fcr: 0x01, ier: 0x0f)
        // Modem status only: loopback toggling DTR sets DDSR.
        _ = u.write(4, U.mcrLoop, now: now)
        _ = u.read(2, now: now) // consume THRE
        _ = u.write(4, U.mcrLoop | U.mcrDTR, now: now)
        #expect(u.identification(now: now) == U.iirModemStatus)
        // THRE outranks modem status.
        u.transmitEmptyPending = true
        #expect(u.identification(now: now) == U.iirTransmitEmpty)
        // Received data outranks THRE.
        u.receive(1, now: now)
        #expect(u.identification(now: now) == U.iirReceivedData)
        // Line status (overrun) outranks everything.
        for b in 0..<20 { u.receive(UInt8(b), now: now) }
        #expect(u.identification(now: now) == U.iirLineStatus)
        #expect(u.read(5, now: now) & U.lsrOverrun != 0)
        #expect(u.read(5, now: now) & U.lsrOverrun == 0) // cleared on read
        #expect(u.identification(now: now) == U.iirReceivedData)
    }

    @Test(arguments: [(UInt8(0x01), 1), (0x41, 4), (0x81, 8), (0xc1, 14)])
    func triggerLevels(_ fcr: UInt8, _ level: Int) {
        var u = make(fcr: fcr, ier: U.ierReceivedData)
        #expect(u.triggerLevel == level)
        for i in 0..<(level - 1) { u.receive(UInt8(i), now: now) }
        #expect(u.identification(now: now) == U.iirNone)
        u.receive(0xff, now: now)
        #expect(u.identification(now: now) == U.iirReceivedData)
    }

    @Test func characterTimeoutReportsDataBelowTheTrigger() {
        var u = make(fcr: 0x81, ier: U.ierReceivedData)
        _ = u.write(3, 0x80, now: now); _ = u.write(0, 1, now: now); _ = u.write(3, 0x03, now: now)
        u.receive(0x42, now: now)
        #expect(u.identification(now: now) == U.iirNone)
        let deadline = try! #require(u.timeoutDeadline)
        #expect(deadline - now == u.characterTimeout)
        #expect(u.identification(now: deadline) == U.iirTimeout)
        #expect(u.read(0, now: deadline) == 0x42)
        #expect(u.identification(now: deadline + 1_000_000) == U.iirNone)
    }

    @Test func fifoHoldsSixteenThenOverruns() {
        var u = make(fcr: 0x01)
        var accepted = 0
        for i in 0..<16 where u.receive(UInt8(i), now: now) { accepted += 1 }
        #expect(accepted == 16)
        let took99 = u.receive(99, now: now)
        #expect(!took99)
        #expect(u.read(5, now: now) & (U.lsrOverrun | U.lsrDataReady) == U.lsrOverrun | U.lsrDataReady)
        for i in 0..<16 { #expect(u.read(0, now: now) == UInt8(i)) }
        #expect(u.read(5, now: now) & U.lsrDataReady == 0)
        #expect(u.read(0, now: now) == 0) // empty RBR reads 0
    }

    @Test func withoutFIFOTheReceiverHoldsOneByte() {
        var u = make()
        let first = u.receive(1, now: now), second = u.receive(2, now: now)
        #expect(first && !second)
        #expect(u.read(0, now: now) == 1)
    }

    @Test func fcrClearsTheReceiveFIFO() {
        var u = make(fcr: 0x01)
        u.receive(1, now: now)
        _ = u.write(2, 0x03, now: now)
        #expect(u.read(5, now: now) & U.lsrDataReady == 0)
    }

    @Test func lsrAlwaysShowsTransmitterEmpty() {
        var u = U()
        #expect(u.read(5, now: now) == U.lsrTHREmpty | U.lsrTransmitterEmpty)
    }

    @Test func msrDeltasClearOnRead() {
        var u = U()
        _ = u.write(4, U.mcrLoop, now: now)
        _ = u.read(6, now: now)
        _ = u.write(4, U.mcrLoop | U.mcrRTS | U.mcrOut2, now: now)
        let v = u.read(6, now: now)
        #expect(v & U.msrCTS != 0 && v & U.msrDCD != 0)
        #expect(v & 0x09 == 0x09) // DCTS and DDCD
        #expect(u.read(6, now: now) & U.msrDeltas == 0)
    }

    @Test func mcrLoopSendsTHRToRBR() {
        var u = make(fcr: 0x01)
        _ = u.write(4, U.mcrLoop, now: now)
        let looped = u.write(0, 0x5a, now: now)
        #expect(looped == nil)
        let echoed = u.read(0, now: now)
        #expect(echoed == 0x5a)
        _ = u.write(4, 0, now: now)
        let sent = u.write(0, 0x5b, now: now)
        #expect(sent == 0x5b) // goes to the line
    }
}
