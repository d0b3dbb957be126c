import Testing
@testable import VFIOUser

/// The spec: "The capability list must be a subset of those proposed." A
/// server's VERSION reply names only keys the client's proposal named.
@Suite struct CapabilitiesSubsetTests {
    private func reply(to json: String, migration: Bool = true) throws -> Capabilities {
        let caps = try Array(json.utf8).withUnsafeBytes { try Capabilities.parse(json: $0) }
        return try Capabilities.serverReply(to: caps, offersMigration: migration)
    }

    @Test func onlyMaxMessageFDsProposed() throws {
        let r = try reply(to: #"{"capabilities": {"max_msg_fds": 16}}"#)
        #expect(r.json == #"{"capabilities":{"max_msg_fds":8}}"#)
    }

    @Test func twoLimitsProposed() throws {
        let r = try reply(to: #"{"capabilities": {"max_msg_fds": 4, "max_data_xfer_size": 65536}}"#)
        #expect(r.json == #"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576}}"#)
        #expect(r.named == [.maxMessageFDs, .maxDataTransferSize])
    }

    @Test func emptyProposalGetsAnEmptyObject() throws {
        let r = try reply(to: #"{}"#)
        #expect(r.json == #"{"capabilities":{}}"#)
        // The limits nobody named are the spec's defaults, which the server enforces.
        #expect(r.maxMessageFDs == 1 && r.maxDataTransferSize == 1 << 20 && r.pageSizes == 4096 && r.maxDMAMaps == 65535)
    }

    @Test func unproposedMaxMessageFDsIsTheDefaultOfOne() throws {
        let r = try reply(to: #"{"capabilities": {"pgsizes": 4096}}"#)
        #expect(r.json == #"{"capabilities":{"pgsizes":4096}}"#)
        #expect(r.maxMessageFDs == 1)
    }

    @Test func featuresOnlyWhenProposed() throws {
        let without = try reply(to: #"{"capabilities": {"max_dma_maps": 100}}"#)
        #expect(without.migration == nil && !without.writeMultiple && without.gfxPlane == nil)
        #expect(without.json == #"{"capabilities":{"max_dma_maps":100}}"#)
        let with = try reply(to: #"{"capabilities": {"migration": {"pgsize": 4096}, "write_multiple": true}}"#)
        #expect(with.json == #"{"capabilities":{"migration":{"pgsize":4096},"write_multiple":true}}"#)
        // A device without migration does not offer it even when asked.
        let noMigration = try reply(to: #"{"capabilities": {"migration": {"pgsize": 4096}}}"#, migration: false)
        #expect(noMigration.json == #"{"capabilities":{}}"#)
    }

    @Test func everyReplyKeyWasProposed() throws {
        let keys = ["max_msg_fds", "max_data_xfer_size", "pgsizes", "max_dma_maps"]
        let values = ["max_msg_fds": "16", "max_data_xfer_size": "1048576", "pgsizes": "4096", "max_dma_maps": "65535"]
        for mask in 0..<(1 << keys.count) {
            let chosen = keys.indices.filter { mask & (1 << $0) != 0 }.map { keys[$0] }
            let body = chosen.map { "\"\($0)\": \(values[$0]!)" }.joined(separator: ", ")
            let r = try reply(to: "{\"capabilities\": {\(body)}}")
            for key in keys {
                #expect(r.json.contains("\"\(key)\"") == chosen.contains(key), "proposal \(chosen): reply \(r.json)")
            }
        }
    }

    @Test func aClientsOwnProposalNamesAllFourLimits() {
        #expect(Capabilities().json == #"{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535}}"#)
    }
}

@Suite struct VersionWithoutJSONTests {
    @Test func aBareVersionNamesNothing() throws {
        let h = Header(messageID: 1, command: Command.version.rawValue, messageSize: 20)
        let request = try [UInt8](repeating: 0, count: 4).withUnsafeBytes { try Request.decode(h, payload: $0, fdCount: 0) }
        guard case .version(_, _, let caps) = request else { Issue.record("not a VERSION: \(request)"); return }
        #expect(caps.named.isEmpty)
        #expect(try Capabilities.serverReply(to: caps, offersMigration: true).json == #"{"capabilities":{}}"#)
    }
}
