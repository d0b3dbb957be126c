import Glibc
import PCI
import Testing
@testable import MTTY

final class SpySink: InterruptSink {
    var level = false
    var rises = 0
    var msi = 0
    func trigger(_ index: IRQIndex, vector: Int) { if index == .msi { msi += 1 } }
    func setINTxLevel(_ asserted: Bool) {
        if asserted && !level { rises += 1 }
        level = asserted
    }
}

@Suite("mtty device model (no socket)")
struct MTTYDeviceTests {
    func read(_ d: MTTY, _ region: Int, _ offset: UInt64, _ count: Int = 1) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        _ = out.withUnsafeMutableBytes { d.read(region: region, offset: offset, into: $0) }
        return out
    }
    func write(_ d: MTTY, _ region: Int, _ offset: UInt64, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { d.write(region: region, offset: offset, data: $0) }
    }

    @Test func configSpaceMatchesTheSample() throws {
        let d = try MTTY(ports: 2)
        let c = read(d, 7, 0, 256)
        #expect(c[0..<4] == [0x48, 0x43, 0x53, 0x32])
        #expect(c[4] == 0x01 && c[6] == 0x00 && c[7] == 0x02)       // command I/O, status DEVSEL medium
        #expect(c[8] == 0x10 && c[9] == 0x02 && c[10] == 0x00 && c[11] == 0x07)
        #expect(c[0x10] == 0x01 && c[0x14] == 0x01)                  // two I/O BARs
        #expect(c[0x2c..<0x30] == [0x48, 0x43, 0x53, 0x32])
        #expect(c[0x34] == 0 && c[0x3d] == 1)
        #expect(c[0x40] == 0x23 && c[0x43] == 0x80 && c[0x4c] == 0x23)
        #expect(Array(c[0x60..<0x6f]) == Array("PCI Serial/UART".utf8))
        let single = try MTTY(ports: 1)
        #expect(read(single, 7, 0x14, 4) == [0, 0, 0, 0])
        #expect(single.regions[1].size == 0 && d.regions[1].size == 8)
    }

    @Test func barSizingReadsBackTheSample() throws {
        let d = try MTTY(ports: 2)
        write(d, 7, 0x10, [0xff, 0xff, 0xff, 0xff])
        #expect(read(d, 7, 0x10, 4) == [0xf9, 0xff, 0xff, 0xff])
        write(d, 7, 0x18, [0xff, 0xff, 0xff, 0xff]) // BAR2 absent
        #expect(read(d, 7, 0x18, 4) == [0, 0, 0, 0])
        write(d, 7, 0x3d, [4])                        // pin is read-only
        #expect(read(d, 7, 0x3d) == [1])
        write(d, 7, 0x3c, [0x0b])
        #expect(read(d, 7, 0x3c) == [0x0b])
    }

    @Test func echoRaisesAndLowersINTx() throws {
        let d = try MTTY(ports: 2)
        let spy = SpySink()
        d.interrupts = spy
        write(d, 0, 2, [0x01])        // FIFO on, trigger 1
        write(d, 0, 1, [0x01])        // RDI
        write(d, 0, 0, [0x41])        // THR → RBR
        #expect(spy.level && spy.rises == 1)
        #expect(read(d, 0, 2) == [0xc4])
        #expect(read(d, 0, 0) == [0x41])
        #expect(!spy.level)
        // Port 1 shares the line.
        write(d, 1, 1, [0x02])
        #expect(spy.level && spy.rises == 2)
        #expect(read(d, 1, 2) == [0x02])
        #expect(!spy.level)
    }

    @Test func resetReturnsToPowerOn() throws {
        let d = try MTTY(ports: 1)
        write(d, 0, 7, [0x77]); write(d, 0, 3, [0x03]); write(d, 0, 2, [0x01]); write(d, 0, 0, [9])
        write(d, 7, 0x3c, [5])
        d.reset()
        #expect(read(d, 0, 7) == [0] && read(d, 0, 3) == [0] && read(d, 0, 5) == [0x60])
        #expect(read(d, 7, 0x3c) == [0])
    }

    @Test func stateRoundTripsAndRefusesTheWrongShape() throws {
        let a = try MTTY(ports: 2)
        write(a, 0, 2, [0x81]); write(a, 0, 7, [0x3c]); write(a, 1, 2, [0x01])
        for b in Array("hello".utf8) { write(a, 0, 0, [b]) }
        let state = a.saveState()
        let b = try MTTY(ports: 2)
        try b.restoreState(state, version: 2)
        for p in 0..<2 {
            var restored = b.ports[p]
            restored.lastReceiveActivity = a.ports[p].lastReceiveActivity
            #expect(restored == a.ports[p])
        }
        #expect(read(b, 0, 7) == [0x3c])
        #expect((0..<5).map { _ in read(b, 0, 0)[0] } == Array("hello".utf8))
        #expect(throws: DeviceError.self) { try MTTY(ports: 1).restoreState(state, version: 2) }
        var future = state
        future[4] = 9
        #expect(throws: DeviceError(EINVAL, "unsupported mtty state version 9")) { try b.restoreState(future, version: 9) }
    }

    @Test("version 2 keeps a pending receive timeout on time; version 1 states are still read")
    func stateVersions() throws {
        var now: UInt64 = 1_000_000_000
        let a = try MTTY(ports: 1, clock: { now })
        write(a, 0, 2, [0xc1])                    // FIFO on, trigger 14: one byte waits for the timeout
        write(a, 0, 1, [0x01])
        write(a, 0, 0, [0x41])
        now += 100_000                            // 0.1 ms of the ~0.35 ms timeout (115200 baud) passed
        let v2 = a.saveState()
        #expect(v2[4] == 2)
        var later: UInt64 = 50_000_000_000       // the destination's clock is elsewhere
        let b = try MTTY(ports: 1, clock: { later })
        try b.restoreState(v2, version: 2)
        #expect(b.ports[0].lastReceiveActivity == later - 100_000)
        later += 1_000_000
        #expect(read(b, 0, 2)[0] & 0x0f == 0x0c)  // character timeout reported
        // The same state in version 1's layout: no idle time, still restored.
        var v1 = Array(v2[0..<7]) + Array(v2[7..<(7 + MTTY.portStateSize)]) + Array(v2[(7 + MTTY.portStateSize + 8)...])
        v1[4] = 1
        let c = try MTTY(ports: 1, clock: { later })
        try c.restoreState(v1, version: 1)
        #expect(c.ports[0].receive == [0x41])
        #expect(c.ports[0].lastReceiveActivity == later)
    }
}
