import Foundation
import Glibc
import Testing
import VFIOUser
import VFIOUserClient

/// Thousands of random and mutated messages against a separate `umdev serve`
/// process: it must not crash, must close every descriptor it was sent, and
/// must still serve a well-formed client afterwards.
@Suite("Hostile input", .serialized)
struct HostileInputTests {
    /// Valid messages to mutate (payloads only; ids and fds are added per send).
    static let seeds: [(UInt16, [UInt8])] = [
        (1, versionPayloadStatic(json: VFIOUserClient.qemuCapabilitiesJSON)),
        (2, le32(32) + le32(3) + le64(0) + le64(0x10000) + le64(0x1000)),
        (3, le32(24) + le32(0) + le64(0x10000) + le64(0x1000)),
        (4, le32(16) + le32(0) + le32(0) + le32(0)),
        (5, le32(64) + le32(0) + le32(1) + le32(0) + le64(0) + le64(0)),
        (6, le32(16) + le32(0) + le32(0) + le32(0)),
        (7, le32(16) + le32(0) + le32(0) + le32(0)),
        (8, le32(20) + le32(0x24) + le32(0) + le32(0) + le32(1)),
        (8, le32(21) + le32(0x22) + le32(2) + le32(1) + le32(1) + [1]),
        (9, le64(0x10) + le32(0) + le32(4)),
        (10, le64(0x10) + le32(0) + le32(4) + le32(0xdead_beef)),
        (10, le64(0x4) + le32(7) + le32(2) + le16(0xffff)),
        (13, []),
        (15, le64(1) + le64(0x20) + le32(0) + le32(4) + le64(0x55)),
        (16, le32(16) + le32(2 | 1 << 16)),
        (16, le32(16) + le32(2 | 1 << 17) + le32(1) + le32(0)),
        (17, le32(72) + le32(64)),
        (18, le32(12) + le32(4) + le32(1)),
    ]

    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            var x = state
            x ^= x >> 33; x = x &* 0xff51afd7ed558ccd; x ^= x >> 33
            return x
        }
    }

    static func mutate(_ m: inout [UInt8], _ rng: inout Generator) {
        switch Int.random(in: 0..<7, using: &rng) {
        case 0: // flip bytes
            for _ in 0..<Int.random(in: 1...4, using: &rng) where !m.isEmpty {
                m[Int.random(in: 0..<m.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            }
        case 1: // truncate payload but keep the header's size honest
            if m.count > 16 { m.removeLast(Int.random(in: 1...(m.count - 16), using: &rng)) }
        case 2: // extend with garbage
            m += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 3: // boundary values in a random 4-byte field
            if m.count >= 20 {
                let at = 16 + 4 * Int.random(in: 0..<((m.count - 16) / 4), using: &rng)
                let v: UInt32 = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1000, 0xfff][Int.random(in: 0..<7, using: &rng)]
                for i in 0..<4 { m[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
            }
        case 4: // random flags
            let f = UInt32.random(in: 0...0x3f, using: &rng)
            for i in 0..<4 { m[8 + i] = UInt8(truncatingIfNeeded: f >> (8 * UInt32(i))) }
        case 5: // random command
            m[2] = UInt8.random(in: 0...20, using: &rng)
        default: // entirely random payload
            let n = Int.random(in: 0...96, using: &rng)
            m = Array(m[0..<16]) + (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
        // Keep msg_size consistent with the bytes most of the time, so the
        // server parses the payload rather than waiting for bytes.
        let size = UInt32(m.count)
        for i in 0..<4 { m[4 + i] = UInt8(truncatingIfNeeded: size >> (8 * UInt32(i))) }
    }

    @Test func tenThousandMutatedMessages() throws {
        let server = try ServerProcess(type: "test")
        var rng = Generator(state: 0x5eed)
        var client = try VFIOUserClient(path: server.path)
        try client.negotiate()
        // Taken once a client is served: by then `serve` has long closed the
        // socket it said READY=1 on (it accepts only after notifying).
        let baseline = server.openFDs()
        var sent = 0, errors = 0, reconnects = 0
        while sent < 10_000 {
            let seed = Self.seeds[Int.random(in: 0..<Self.seeds.count, using: &rng)]
            var m = rawMessage(id: UInt16(truncatingIfNeeded: sent), command: seed.0, payload: seed.1)
            Self.mutate(&m, &rng)
            var fds: [Int32] = []
            if Int.random(in: 0..<4, using: &rng) == 0 {
                fds = (0..<Int.random(in: 1...10, using: &rng)).map { _ in eventfd() }
            }
            defer { fds.forEach { close($0) } }
            sent += 1
            do {
                try client.sendRaw(m, fds: fds)
                let h = Header(m.withUnsafeBytes { $0.baseAddress! })
                if h.flags & Header.noReply != 0 || h.flags & 0xf == 1 {
                    // No reply expected; a REGION_READ probe keeps us in step.
                    _ = try client.read(region: 0, offset: 0, count: 1)
                    continue
                }
                // Drain everything the server says (replies, its own DMA requests).
                while true {
                    let r = try client.receiveMessage(timeout: 1000)
                    r.fds.forEach { close($0) }
                    if r.header.isReply && r.header.messageID == h.messageID {
                        if r.header.isError { errors += 1 }
                        break
                    }
                }
            } catch {
                // A framing error (or a lie about sizes) legitimately ends the
                // connection; reconnect and go on.
                reconnects += 1
                client = try VFIOUserClient(path: server.path)
                if Bool.random(using: &rng) { try client.negotiate() }
            }
        }
        #expect(errors > sent / 10)
        // A well-formed client still works after all that.
        let good = try VFIOUserClient(path: server.path)
        withExtendedLifetime(client) {}
        client = good
        try good.negotiate()
        #expect(try good.deviceInfo().regionCount == 9)
        try good.write32(region: 0, offset: 0x10, 0x600d)
        #expect(try good.read32(region: 0, offset: 0x10) == 0x600d)
        #expect(server.isRunning)
        // Every descriptor the server received has been closed: it holds
        // what it held with the first client, a connection's socket included.
        let after = server.openFDs()
        #expect(after.count == baseline.count, "server fds before \(baseline) after \(after)")
        print("hostile: \(sent) messages, \(errors) error replies, \(reconnects) reconnects")
    }
}
