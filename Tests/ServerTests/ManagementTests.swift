import Glibc
import MTTY
import PCI
import Testing
import VFIOUser
import VFIOUserClient
import VFIOUserServer

@Suite("device management: REQ, idle borrowing, dropping a client")
struct ManagementTests {
    @Test("requestRelease signals the REQ eventfd the client attached, and only that")
    func requestRelease() throws {
        let s = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        #expect(!s.server.requestRelease())                       // nobody attached
        let c = try s.connect()
        #expect(try c.irqInfo(4).count == 1 && c.irqInfo(3).count == 1)
        #expect(!s.server.requestRelease())                       // attached, but no REQ eventfd
        let req = eventfd()
        defer { close(req) }
        try c.setIRQs(index: 4, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [req])
        #expect(s.server.requestRelease())
        #expect(waitSignal(req) == 1)
        // Disabling the index detaches it again.
        try c.setIRQs(index: 4, flags: VFIO.irqSetDataNone | VFIO.irqSetActionTrigger, count: 0)
        #expect(!s.server.requestRelease())
        #expect(s.server.clientPID == getpid())
    }

    @Test("the idle device can be borrowed; an attached one cannot; a dropped client lets go")
    func idleBorrowing() throws {
        let s = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        #expect(s.server.withIdleDevice { $0.typeName } == "mtty-1")
        let c = try s.connect()
        #expect(s.server.isAttached)
        #expect(s.server.withIdleDevice { _ in true } == nil)
        #expect(!s.server.waitUntilDetached(seconds: 0.1))
        s.server.dropClient()
        #expect(s.server.waitUntilDetached(seconds: 2))
        #expect(throws: ClientError.self) { try c.deviceInfo() }
        #expect(s.server.withIdleDevice { _ in true } == true)
        let again = try s.connect()                                // the next client is served
        expectAlive(again)
    }
}
