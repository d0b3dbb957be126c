import Glibc
import Testing
import VFIOUser
import VFIOUserClient

@Suite("VERSION negotiation")
struct VersionTests {
    func versionPayload(major: UInt16 = 0, minor: UInt16 = 0, json: String?) -> [UInt8] {
        var p = le16(major) + le16(minor)
        if let json { p += Array(json.utf8) + [0] }
        return p
    }

    @Test func qemuProposalGetsACompactNULTerminatedReply() throws {
        let s = try MemoryServer()
        let c = try s.connect(negotiate: false)
        var p = versionPayload(json: VFIOUserClient.qemuCapabilitiesJSON)
        #expect(p.count == 198) // 214-byte message as recorded from QEMU
        try c.sendRaw(rawMessage(id: 0, command: 1, payload: p))
        let r = try c.receiveMessage()
        #expect(!r.header.isError)
        #expect(r.header.messageID == 0 && r.header.command == 1 && r.header.flags == 1)
        #expect(r.u16(0) == 0 && r.u16(2) == 0)
        #expect(r.payload.last == 0)
        // QEMU receives the reply into its 214-byte request buffer.
        #expect(r.header.messageSize <= 214)
        #expect(r.payload.count - 5 < 180)
        let caps = try r.payload.withUnsafeBytes { try Capabilities.parse(json: UnsafeRawBufferPointer(rebasing: $0[4..<($0.count - 1)])) }
        #expect(caps.maxMessageFDs == 8)
        #expect(caps.maxDataTransferSize == 1 << 20)
        #expect(caps.pageSizes == 4096)
        #expect(caps.maxDMAMaps == 65535)
        #expect(caps.writeMultiple)
        #expect(caps.migration?.pageSize == 4096)
        p = []
        _ = p
        expectAlive(c)
    }

    @Test func noJSONAndEmptyObjectAreAccepted() throws {
        let s = try MemoryServer()
        for json in [nil, "{}"] as [String?] {
            let c = try s.connect(negotiate: false)
            #expect(try errnoOf(c, rawMessage(command: 1, payload: versionPayload(json: json))) == 0)
            expectAlive(c)
        }
    }

    @Test func limitsAreNeverAboveTheClients() throws {
        let s = try MemoryServer()
        let c = try s.connect(negotiate: false)
        let caps = try c.negotiate(json: #"{"capabilities":{"max_dma_maps":7,"pgsizes":12288}}"#)
        #expect(caps.maxDMAMaps == 7)
        #expect(caps.pageSizes == 4096)
        #expect(!caps.writeMultiple)
        #expect(caps.migration == nil)
    }

    @Test(arguments: [
        ("bad major", versionPayloadStatic(major: 1, json: "{}"), ENOTSUP),
        ("short", [UInt8(0), 0], EINVAL),
        ("not NUL-terminated", le16(0) + le16(0) + Array("{}".utf8), EINVAL),
        ("malformed JSON", versionPayloadStatic(json: "{\"capabilities\":"), EINVAL),
        ("JSON not an object", versionPayloadStatic(json: "[1]"), EINVAL),
        ("capabilities not an object", versionPayloadStatic(json: #"{"capabilities":3}"#), EINVAL),
        ("max_msg_fds negative", versionPayloadStatic(json: #"{"capabilities":{"max_msg_fds":-1}}"#), EINVAL),
        ("max_msg_fds not a number", versionPayloadStatic(json: #"{"capabilities":{"max_msg_fds":"8"}}"#), EINVAL),
        ("migration not an object", versionPayloadStatic(json: #"{"capabilities":{"migration":1}}"#), EINVAL),
        ("bad pgsize", versionPayloadStatic(json: #"{"capabilities":{"migration":{"pgsize":512}}}"#), EINVAL),
        ("no 4 KiB pages", versionPayloadStatic(json: #"{"capabilities":{"pgsizes":8192}}"#), EINVAL),
        ("oversized JSON", versionPayloadStatic(json: "{\"x\":\"" + String(repeating: "a", count: 5000) + "\"}"), E2BIG),
    ] as [(String, [UInt8], Int32)])
    func badVersionIsRefusedAndTheConnectionLives(_ name: String, _ payload: [UInt8], _ expected: Int32) throws {
        let s = try MemoryServer()
        let c = try s.connect(negotiate: false)
        #expect(try errnoOf(c, rawMessage(command: 1, payload: payload)) == expected, "\(name)")
        // Still un-negotiated: a good VERSION now succeeds.
        try c.negotiate()
        expectAlive(c)
    }

    @Test func unknownKeysAreIgnored() throws {
        let s = try MemoryServer()
        let c = try s.connect(negotiate: false)
        try c.negotiate(json: #"{"capabilities":{"future":{"x":[1,2,{"y":null}]},"max_msg_fds":4},"other":true}"#)
        expectAlive(c)
    }

    @Test func secondVersionIsRefused() throws {
        let s = try MemoryServer()
        let c = try s.connect()
        #expect(try errnoOf(c, rawMessage(command: 1, payload: versionPayload(json: "{}"))) == EINVAL)
        expectAlive(c)
    }

    @Test func commandsBeforeVersionAreRefused() throws {
        let s = try MemoryServer()
        let c = try s.connect(negotiate: false)
        #expect(try errnoOf(c, rawMessage(command: 4, payload: le32(16) + le32(0) + le32(0) + le32(0))) == EINVAL)
        #expect(try errnoOf(c, rawMessage(command: 13)) == EINVAL)
        try c.negotiate()
        expectAlive(c)
    }
}

func versionPayloadStatic(major: UInt16 = 0, minor: UInt16 = 0, json: String) -> [UInt8] {
    le16(major) + le16(minor) + Array(json.utf8) + [0]
}
