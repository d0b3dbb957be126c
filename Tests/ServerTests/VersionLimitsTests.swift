import Glibc
import Testing
import VFIOUser
import VFIOUserClient

/// A limit the client's VERSION left out is the spec's default on both sides,
/// and the server holds the client to it (Protocol/README.md §3).
@Suite("VERSION: unnamed limits are the defaults, enforced")
struct VersionLimitsTests {
    /// SET_IRQS on the test device's MSI-X index with `n` eventfds; the errno (0: accepted).
    private func setIRQs(_ c: VFIOUserClient, eventfds n: Int) throws -> Int32 {
        let fds = (0..<n).map { _ in eventfd() }
        defer { for fd in fds { close(fd) } }
        do throws(ClientError) {
            try c.setIRQs(index: IRQIndex.msix.wire, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger,
                          count: UInt32(n), fds: fds)
            return 0
        } catch {
            guard case .remote(let e) = error else { throw error }
            return e
        }
    }

    @Test func withoutMaxMessageFDsOneDescriptorPerMessage() throws {
        let live = try MemoryServer()
        let c = try live.connect(negotiate: false)
        let caps = try c.negotiate(json: #"{"capabilities": {"pgsizes": 4096}}"#)
        #expect(c.serverVersionJSON == #"{"capabilities":{"pgsizes":4096}}"#)
        #expect(caps.maxMessageFDs == 1)
        #expect(try setIRQs(c, eventfds: 1) == 0)
        #expect(try setIRQs(c, eventfds: 2) == EINVAL)
        expectAlive(c)
    }

    @Test func withMaxMessageFDsTheServersEight() throws {
        let live = try MemoryServer()
        let c = try live.connect(negotiate: false)
        let caps = try c.negotiate(json: #"{"capabilities": {"max_msg_fds": 16}}"#)
        #expect(c.serverVersionJSON == #"{"capabilities":{"max_msg_fds":8}}"#)
        #expect(caps.maxMessageFDs == 8)
        #expect(try setIRQs(c, eventfds: 2) == 0)
        #expect(try setIRQs(c, eventfds: 4) == 0)   // every MSI-X vector in one message
        expectAlive(c)
    }
}
