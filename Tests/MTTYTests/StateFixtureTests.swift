import Glibc
import PCI
import TestSupport
import Testing
@testable import MTTY

/// mtty migration states as umdev wrote them before every model's state
/// went through StateWriter (commit 66a0d8b's code, saved from a device in
/// a known register state): they must keep loading to the same registers.
@Suite("mtty state streams written by earlier umdev still load")
struct MTTYStateFixtureTests {

    /// mtty-2, version 2: port 0 at divisor 12, 8 data bits with parity
    /// (LCR 0x1b), FIFO on at trigger 14, RX and line-status interrupts,
    /// "hi!" unread, received 123456 ns before the save; port 1 with 20
    /// bytes pushed into its 16-byte FIFO (overrun pending), THRE pending.
    /// Config space: I/O decoding on, interrupt line 10.
    static let dualV2 = [UInt8](hex: """
        4d545459020002051b0b5ac10c0000b000036869210000000000000000000000000040e2010000000000020000a50100
        0002b00110303132333435363738393a3b3c3d3e3f40e201000000000048435332010000021002000700000000010000
        00010000000000000000000000000000000000000000000000484353320000000000000000000000000a010000230000
        80230000002300000023000000000000000000000000000000000000005043492053657269616c2f5541525400000000
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
        """)

    /// The same device in version 1's layout (no receive idle time).
    static let dualV1 = [UInt8](hex: """
        4d545459010002051b0b5ac10c0000b0000368692100000000000000000000000000020000a501000002b00110303132
        333435363738393a3b3c3d3e3f4843533201000002100200070000000001000000010000000000000000000000000000
        000000000000000000484353320000000000000000000000000a01000023000080230000002300000023000000000000
        000000000000000000000000005043492053657269616c2f554152540000000000000000000000000000000000000000
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000
        """)

    /// mtty-1, version 2: every interrupt enabled, THRE pending, 'B' unread, 7 ns idle.
    static let singleV2 = [UInt8](hex: """
        4d5454590200010f00007700000000b00101420000000000000000000000000000000700000000000000484353320100
        000210020007000000000100000000000000000000000000000000000000000000000000000048435332000000000000
        000000000000000100002300008023000000230000002300000000000000000000000000000000000000504349205365
        7269616c2f55415254000000000000000000000000000000000000000000000000000000000000000000000000000000
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
        000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
        00000000000000000000
        """)

    static func uart(ier: UInt8, lcr: UInt8, mcr: UInt8, scr: UInt8, fcr: UInt8, divisor: UInt16, lsrErrors: UInt8,
                     thre: Bool, receive: [UInt8], last: UInt64) -> UART16550 {
        var u = UART16550()
        u.ier = ier; u.lcr = lcr; u.mcr = mcr; u.scr = scr; u.fcr = fcr; u.divisor = divisor
        u.lsrErrors = lsrErrors; u.transmitEmptyPending = thre; u.receive = receive; u.lastReceiveActivity = last
        return u
    }

    static let now: UInt64 = 90_000_000_000

    func load(_ state: [UInt8], ports: Int, version: Int) throws -> MTTY {
        let d = try MTTY(ports: ports, clock: { Self.now })
        try d.restoreState(state, version: version)
        return d
    }

    func expectDualConfig(_ d: MTTY) {
        let fresh = try! MTTY(ports: 2)
        var expected = fresh.config.bytes
        expected[4] = 0x01; expected[0x3c] = 0x0a
        #expect(d.config.bytes == expected)
    }

    @Test("version 2 of mtty-2 loads to the registers it was saved with")
    func dualVersion2() throws {
        let d = try load(Self.dualV2, ports: 2, version: 2)
        #expect(d.ports == [
            Self.uart(ier: 5, lcr: 0x1b, mcr: 0x0b, scr: 0x5a, fcr: 0xc1, divisor: 12, lsrErrors: 0, thre: false,
                      receive: Array("hi!".utf8), last: Self.now - 123_456),
            Self.uart(ier: 2, lcr: 0, mcr: 0, scr: 0xa5, fcr: 0x01, divisor: 0, lsrErrors: UART16550.lsrOverrun, thre: true,
                      receive: Array(UInt8(0x30)...0x3f), last: Self.now - 123_456),
        ])
        expectDualConfig(d)
        #expect(d.saveState() == Self.dualV2, "today's writer writes the same bytes")
    }

    @Test("version 1 of mtty-2 loads to the same registers, received just now")
    func dualVersion1() throws {
        let d = try load(Self.dualV1, ports: 2, version: 1)
        #expect(d.ports == [
            Self.uart(ier: 5, lcr: 0x1b, mcr: 0x0b, scr: 0x5a, fcr: 0xc1, divisor: 12, lsrErrors: 0, thre: false,
                      receive: Array("hi!".utf8), last: Self.now),
            Self.uart(ier: 2, lcr: 0, mcr: 0, scr: 0xa5, fcr: 0x01, divisor: 0, lsrErrors: UART16550.lsrOverrun, thre: true,
                      receive: Array(UInt8(0x30)...0x3f), last: Self.now),
        ])
        expectDualConfig(d)
    }

    @Test("version 2 of mtty-1 loads; streams for the other port count or a mismatched version are refused")
    func singleAndRefusals() throws {
        let d = try load(Self.singleV2, ports: 1, version: 2)
        #expect(d.ports == [Self.uart(ier: 0x0f, lcr: 0, mcr: 0, scr: 0x77, fcr: 0, divisor: 0, lsrErrors: 0, thre: true,
                                      receive: [0x42], last: Self.now - 7)])
        #expect(d.config.bytes == (try MTTY(ports: 1)).config.bytes)
        #expect(d.saveState() == Self.singleV2)
        #expect(throws: DeviceError.self) { _ = try load(Self.singleV2, ports: 2, version: 2) }
        #expect(throws: DeviceError.self) { _ = try load(Self.dualV2, ports: 2, version: 1) }
        #expect(throws: DeviceError.self) { _ = try load(Self.dualV1, ports: 2, version: 2) }
        #expect(throws: DeviceError.self) { _ = try load(Array(Self.dualV2.dropLast()), ports: 2, version: 2) }
        #expect(throws: DeviceError.self) { _ = try load(Self.dualV2 + [0], ports: 2, version: 2) }
    }
}
