import Glibc
import Testing
@testable import VFIOUser

@Suite("Codec: header, requests, capabilities, JSON")
struct CodecTests {
    func decode(_ command: Command, _ payload: [UInt8], flags: UInt32 = 0, fds: Int = 0) throws -> Request {
        let h = Header(messageID: 1, command: command.rawValue, messageSize: UInt32(16 + payload.count), flags: flags)
        return try payload.withUnsafeBytes { try Request.decode(h, payload: $0, fdCount: fds) }
    }

    func bytes(_ parts: [UInt64], sizes: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        for (v, n) in zip(parts, sizes) { for i in 0..<n { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
        return out
    }

    @Test func headerRoundTripsLittleEndian() {
        var raw = [UInt8](repeating: 0, count: 16)
        let h = Header(messageID: 0x1234, command: 9, messageSize: 0x20, flags: 0x31, error: 22)
        raw.withUnsafeMutableBytes { h.store(to: $0.baseAddress!) }
        #expect(raw == [0x34, 0x12, 9, 0, 0x20, 0, 0, 0, 0x31, 0, 0, 0, 22, 0, 0, 0])
        #expect(raw.withUnsafeBytes { Header($0.baseAddress!) } == h)
        #expect(h.isReply && !h.wantsReply && h.isError)
    }

    @Test func regionReadDecodes() throws {
        guard case .regionRead(let a) = try decode(.regionRead, bytes([0x10, 7, 4], sizes: [8, 4, 4])) else { Issue.record(); return }
        #expect(a.offset == 0x10 && a.region == 7 && a.count == 4)
    }

    @Test func writeDataMustMatchCount() {
        #expect(throws: ProtocolError.invalid("REGION_WRITE count differs from the data size")) { try decode(.regionWrite, bytes([0, 0, 4], sizes: [8, 4, 4]) + [1, 2]) }
    }

    @Test func fdsOnlyWhereAllowed() {
        #expect(throws: ProtocolError.invalid("descriptors on a command that takes none")) { try decode(.deviceGetInfo, bytes([16, 0, 0, 0], sizes: [4, 4, 4, 4]), fds: 1) }
        #expect(throws: ProtocolError.invalid("DMA_MAP with more than one descriptor")) { try decode(.dmaMap, bytes([32, 3, 0, 0, 4096], sizes: [4, 4, 8, 8, 8]), fds: 2) }
        #expect(throws: Never.self) { try decode(.dmaMap, bytes([32, 3, 0, 0, 4096], sizes: [4, 4, 8, 8, 8]), fds: 1) }
    }

    @Test func setIRQsRules() {
        let ok = bytes([20, 0x24, 0, 0, 1], sizes: [4, 4, 4, 4, 4])
        #expect(throws: Never.self) { try decode(.deviceSetIRQs, ok, fds: 1) }
        #expect(throws: Never.self) { try decode(.deviceSetIRQs, ok, fds: 0) } // de-assign
        #expect(throws: ProtocolError.invalid("SET_IRQS needs exactly one DATA flag")) { try decode(.deviceSetIRQs, bytes([20, 0x26, 0, 0, 1], sizes: [4, 4, 4, 4, 4])) }
        #expect(throws: ProtocolError.invalid("SET_IRQS needs exactly one ACTION flag")) { try decode(.deviceSetIRQs, bytes([20, 0x38 | 1, 0, 0, 1], sizes: [4, 4, 4, 4, 4])) }
        #expect(throws: ProtocolError.invalid("SET_IRQS count 0 is only TRIGGER|DATA_NONE from 0")) { try decode(.deviceSetIRQs, bytes([20, 0x09, 0, 0, 0], sizes: [4, 4, 4, 4, 4])) }
    }

    @Test func replyTypedAndUnknownCommandsAreRefused() {
        #expect(throws: ProtocolError.invalid("reply or unknown type sent as a request")) { try decode(.deviceReset, [], flags: 1) }
        let h = Header(messageID: 0, command: 77, messageSize: 16)
        #expect(throws: ProtocolError.invalid("unknown command")) { try Request.decode(h, payload: UnsafeRawBufferPointer(start: nil, count: 0), fdCount: 0) }
    }

    @Test func qemuCapabilitiesParse() throws {
        let json = #"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}"#
        let caps = try Array(json.utf8).withUnsafeBytes { try Capabilities.parse(json: $0) }
        #expect(caps.maxMessageFDs == 16 && caps.maxDataTransferSize == 1 << 20 && caps.maxDMAMaps == 65535)
        #expect(caps.migration == Capabilities.Migration(pageSize: 4096, maxBitmapSize: 268435456))
        #expect(caps.writeMultiple)
        let reply = try Capabilities.serverReply(to: caps, offersMigration: false)
        #expect(reply.json == #"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#)
    }

    @Test(arguments: ["", "{", "{}}", "[1,]", "{\"a\":01}", "{\"a\":\"\\x\"}", "{'a':1}", "nul", "{\"a\":1,}", "\"\u{1}\""])
    func malformedJSONIsRefused(_ text: String) {
        #expect(throws: JSONError.self) { try JSONParser.parse(Array(text.utf8)) }
    }

    @Test func jsonParsesEscapesNumbersAndNesting() throws {
        let v = try JSONParser.parse(Array(#"{"s":"a\"\u00e9\ud83d\ude00","n":-12,"d":1.5e2,"b":[true,false,null]}"#.utf8))
        #expect(v["s"] == .string("a\"é😀"))
        #expect(v["n"] == .integer(-12))
        #expect(v["d"] == .double(150))
        #expect(v["b"] == .array([.bool(true), .bool(false), .null]))
        let deep = String(repeating: "[", count: 40) + String(repeating: "]", count: 40)
        #expect(throws: JSONError.self) { try JSONParser.parse(Array(deep.utf8)) }
    }
}

@Suite("ProtocolError equality names the check")
struct ProtocolErrorEqualityTests {
    @Test func sameErrnoOtherCheckIsNotEqual() {
        #expect(ProtocolError.invalid("unknown command") == ProtocolError(EINVAL, "unknown command"))
        #expect(ProtocolError.invalid("unknown command") != ProtocolError.invalid("VERSION must come first"))
        #expect(ProtocolError(E2BIG, "VERSION JSON too large") != ProtocolError(EINVAL, "VERSION JSON too large"))
    }
}
