import CShim
import Foundation
import Glibc
import TestDevice
import TestSupport
import Testing
import VFIOUser
import VFIOUserClient

/// Replays what a real QEMU sent (Tests/Fixtures/qemu-transcripts, copied
/// from shared/reference/qemu-transcripts) and checks each of our replies
/// against the one QEMU accepted from the reference server.
@Suite("QEMU transcript replay")
struct TranscriptReplayTests {
    struct Record {
        var c2s: Bool
        var messageID: UInt16
        var command: UInt16
        var flags: UInt32
        var size: Int
        var nfds: Int
        var fdSizes: [Int]
        var payload: [UInt8]
        var decoded: [String: Any]
    }

    static func load(_ name: String) throws -> [Record] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/qemu-transcripts/\(name).jsonl")
        let text = try String(contentsOf: url, encoding: .utf8)
        var out: [Record] = []
        for line in text.split(separator: "\n") {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            guard let dir = object["dir"] as? String else { continue }
            let hex = object["payload_hex"] as? String ?? ""
            let bytes = [UInt8](hex: hex)
            out.append(Record(c2s: dir == "c2s", messageID: UInt16(object["msg_id"] as! Int), command: UInt16(object["command"] as! Int),
                              flags: UInt32(object["flags"] as! Int), size: object["size"] as! Int, nfds: object["nfds"] as! Int,
                              fdSizes: (object["fd_sizes"] as? [Any])?.compactMap { $0 as? Int } ?? [], payload: bytes,
                              decoded: object["decoded"] as? [String: Any] ?? [:]))
        }
        return out
    }

    /// Replays `name`; `exact` compares region/IRQ/device info byte for byte
    /// (the test device has the recorded server's layout).
    func replay(_ name: String, mappable: Bool, exact: Bool) throws -> (intxSignals: UInt64, replies: Int) {
        let records = try Self.load(name)
        let s = try MemoryServer(mappable: mappable)
        let c = try s.connect(negotiate: false)
        var intx: Int32 = -1
        var opened: [Int32] = []
        defer { opened.forEach { close($0) } }
        var signals: UInt64 = 0
        var replies = 0
        for r in records {
            if r.c2s {
                var fds: [Int32] = []
                if r.command == Command.dmaMap.rawValue, r.nfds == 1 {
                    let fd = umdev_memfd("guest-ram")
                    #expect(ftruncate(fd, off_t(r.fdSizes.first ?? (512 << 20))) == 0)
                    fds = [fd]
                } else if r.command == Command.deviceSetIRQs.rawValue, r.nfds > 0 {
                    fds = (0..<r.nfds).map { _ in eventfd() }
                    if r.payload.withUnsafeBytes({ $0.u32(8) }) == 0 { intx = fds[0] }
                }
                opened += fds
                var header = [UInt8](repeating: 0, count: 16)
                header.withUnsafeMutableBytes {
                    Header(messageID: r.messageID, command: r.command, messageSize: UInt32(r.size), flags: r.flags).store(to: $0.baseAddress!)
                }
                try c.sendRaw(header + r.payload, fds: fds)
                if intx >= 0 { signals += drain(intx) }
                continue
            }
            let ours = try c.receiveMessage(timeout: 5000)
            defer { ours.fds.forEach { close($0) } }
            replies += 1
            let what = "\(name) reply to msg \(r.messageID) (command \(r.command))"
            #expect(ours.header.messageID == r.messageID, "\(what)")
            #expect(ours.header.command == r.command, "\(what)")
            #expect(ours.header.flags == r.flags, "\(what): flags")
            #expect(ours.fds.count == r.nfds, "\(what): descriptors")
            switch Command(rawValue: r.command)! {
            case .version:
                // Ours differs in content but must satisfy QEMU: 0.0, NUL-terminated object, fits its buffer.
                #expect(ours.u16(0) == 0 && ours.u16(2) == 0, "\(what)")
                #expect(ours.payload.last == 0 && ours.header.messageSize <= 214, "\(what)")
            case .deviceGetRegionInfo:
                let argsz = (r.decoded["argsz"] as? Int) ?? 32
                #expect(ours.payload.count <= max(argsz, 32), "\(what): larger than QEMU's argsz")
                if exact { #expect(ours.payload == r.payload, "\(what): payload") }
            case .deviceGetInfo, .deviceGetIRQInfo:
                if exact { #expect(ours.payload == r.payload, "\(what): payload") }
                #expect(ours.header.messageSize == UInt32(r.size), "\(what): size")
            case .regionRead:
                #expect(ours.header.messageSize == UInt32(r.size), "\(what): size")
                #expect(Array(ours.payload.prefix(16)) == Array(r.payload.prefix(16)), "\(what): echo")
            default:
                #expect(ours.header.messageSize == UInt32(r.size), "\(what): size")
            }
        }
        // Posted writes left no reply behind.
        #expect(c.isQuiet(for: 100))
        if intx >= 0 { signals += drain(intx) }
        return (signals, replies)
    }

    @Test func irqSessionWithAMappableBAR() throws {
        let result = try replay("irq", mappable: true, exact: true)
        #expect(result.replies == 672)
        // Two doorbells, plus one re-fire: QEMU's first UNMASK follows the
        // guest's read of BAR0+4, before it clears STATUS.IS, so the line is
        // still asserted at unmask and fires again (kernel vfio-pci does the same).
        #expect(result.intxSignals == 3)
    }

    @Test func irqSessionWithPostedWrites() throws {
        let result = try replay("irq-nommap", mappable: false, exact: true)
        #expect(result.replies == 649)
        #expect(result.intxSignals >= 1)
    }

    @Test func gpioSession() throws {
        _ = try replay("gpio", mappable: true, exact: false)
    }

    @Test func gpioRebootSessionWithResets() throws {
        _ = try replay("gpio-reboot", mappable: true, exact: false)
    }
}
