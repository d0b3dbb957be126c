import Foundation
import Glibc
import MTTY
import PCI
import Testing
import UnixSocket
import VFIOUser
import VFIOUserClient

@Suite("umdev command line")
struct CommandLineTests {
    func run(_ arguments: [String]) throws -> String {
        let r = try runUmdev(arguments)
        #expect(r.status == 0)
        return r.out
    }

    @Test func infoDescribesWhatServeOffers() throws {
        let server = try ServerProcess(type: "mtty-2")
        let text = try run(["info", "--socket", server.path])
        #expect(text.contains("max_msg_fds 8, max_data_xfer_size 1048576"))
        #expect(text.contains("device: PCI|RESET, 9 regions, 5 IRQ indices"))
        #expect(text.contains("PCI 4348:3253 class 070002 rev 10"))
        #expect(text.contains("0 BAR0: 8 bytes, read|write"))
        #expect(text.contains("1 BAR1: 8 bytes, read|write"))
        #expect(text.contains("7 CONFIG: 256 bytes, read|write"))
        #expect(text.contains("0 INTx: 1 vector, eventfd|maskable|automasked"))
        #expect(text.contains("migration: STOP_COPY|PRE_COPY, state RUNNING"))
        let test = try ServerProcess(type: "test")
        let t = try run(["info", "--socket", test.path])
        #expect(t.contains("1 BAR1: 4096 bytes, read|write|mmap, mappable areas [0x0+0x1000], fd offset 0x0"))
    }

    @Test func typesListsTheMdevTypes() throws {
        // No daemon answers in an empty run directory: the default budgets.
        let text = try run(["types", "--run-dir", "/tmp/umdev-no-daemon-\(getpid())"])
        func block(_ type: String) -> String {
            guard let start = text.range(of: "\n  \(type)") else { return "" }
            let rest = text[start.upperBound...]
            return String(rest[..<(rest.range(of: "\n  [a-z]", options: .regularExpression)?.lowerBound ?? rest.endIndex)])
        }
        #expect(block("mtty-1").contains("Available instances:  24\n    Device API:           vfio-pci\n    Name:                 Single port serial\n    Takes:"))
        #expect(!block("mtty-1").contains("Description"))
        #expect(block("mtty-2").contains("Available instances:  12\n"))
        #expect(block("mtty-2").contains("Name:                 Dual port serial"))
        #expect(block("mtty-2").contains("Display:              none"))
        for (name, description) in [("mdpy-vga", "virtual display, 640x480 framebuffer"),
                                    ("mdpy-xga", "virtual display, 1024x768 framebuffer"),
                                    ("mdpy-hd", "virtual display, 1920x1080 framebuffer")] {
            #expect(block(name).contains("Available instances:  4\n"))
            #expect(block(name).contains("Description:          \(description)\n"))
            #expect(block(name).contains("Display:              region plane\n"))
        }
        for (name, mb, available, edid) in [("mbochs-small", 4, 64, "EDID up to 800x600"), ("mbochs-medium", 16, 16, "EDID up to 1920x1440"),
                                            ("mbochs-large", 64, 4, "EDID (no size limit)")] {
            #expect(block(name).contains("Available instances:  \(available)\n"))
            #expect(block(name).contains("Description:          virtual display, \(mb) MB video memory\n"))
            #expect(block(name).contains("Display:              dmabuf plane, \(edid)\n"))
        }
        #expect(block("test").contains("Device API:           vfio-pci"))
        #expect(text.contains("  test  (protocol test device, not a kernel sample)\n"))
        let names = try run(["types", "--names"]).split(separator: "\n")
        #expect(names == ["test", "test-nommap", "mtty-1", "mtty-2", "mdpy-vga", "mdpy-xga", "mdpy-hd",
                          "mbochs-small", "mbochs-medium", "mbochs-large"])
    }

    @Test func infoShowsTheDisplayRegions() throws {
        let mbochs = try ServerProcess(type: "mbochs-large")
        let text = try run(["info", "--socket", mbochs.path])
        #expect(text.contains("device: PCI|RESET, 10 regions, 5 IRQ indices"))
        #expect(text.contains("PCI 1234:1111 class 038000 rev 01"))
        #expect(text.contains("0 BAR0: 67108864 bytes, read|write|mmap, mappable areas [0x0+0x4000000], fd offset 0x0"))
        #expect(text.contains("2 BAR2: 4096 bytes, read|write\n"))
        #expect(text.contains("9 EDID: 4096 bytes, read|write, type GFX/EDID (1/1)"))
        #expect(text.contains("0 INTx: 0 vectors, eventfd"))
        let mdpy = try ServerProcess(type: "mdpy-xga")
        let m = try run(["info", "--socket", mdpy.path])
        #expect(m.contains("PCI 1b36:000f class 038000 rev 01"))
        #expect(m.contains("9 DEVICE-SPECIFIC: 4194304 bytes, read|write|mmap, mappable areas [0x0+0x400000], type vendor 1b36/1 (0x80001b36/1), fd offset 0x0"))
    }
}

@Suite("mtty socket backend")
struct MTTYSocketBackendTests {
    @Test func unixSocketBackendCarriesBytesBothWays() throws {
        let path = socketPath("line")
        let device = try MTTY(ports: 2, backends: [.loopback, .unixSocket(path)])
        let s = try LiveServer(device, type: "mtty-2")
        let c = try s.connect()
        let guest = Guest8250(c)
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [guest.intx])
        try guest.startup(1)
        // The host peer connects to the port's socket.
        let connection = try UnixSocket.connect(path: path)
        let peer = connection.rawValue
        // Host → guest: accepted and delivered on the server's thread, with an interrupt.
        let msg = Array("ping".utf8)
        #expect(write(peer, msg, msg.count) == msg.count)
        #expect(waitSignal(guest.intx) == 1)
        var rx: [UInt8] = []
        while try guest.inb(1, 5) & 0x01 != 0 { rx.append(try guest.inb(1, 0)) }
        #expect(rx == msg)
        // Guest → host: the server writes after the replies, as the line
        // polls writable, so the bytes may come in more than one read.
        for b in Array("pong".utf8) { try guest.outb(1, 0, b) }
        var got: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16)
        var p = pollfd(fd: peer, events: Int16(POLLIN), revents: 0)
        while got.count < 4, poll(&p, 1, 2000) == 1 {
            let n = read(peer, &buffer, buffer.count)
            if n <= 0 { break }
            got += buffer[0..<n]
        }
        #expect(got == Array("pong".utf8))
        // Port 0 still echoes.
        try guest.outb(0, 0, 0x7e)
        #expect(try guest.inb(0, 0) == 0x7e)
    }

    @Test func aRegularFileAtTheSocketPathIsNeverRemoved() throws {
        let path = socketPath("keep")
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        #expect(fd >= 0)
        close(fd)
        defer { unlink(path) }
        #expect(throws: DeviceError.self) { try MTTY(ports: 1, backends: [.unixSocket(path)]) }
        #expect(access(path, F_OK) == 0)
    }
}
