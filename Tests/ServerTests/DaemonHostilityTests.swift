import CShim
import Foundation
import Glibc
import Lifecycle
import Testing
import UnixSocket
import VFIOUser
import VFIOUserClient

/// A raw control connection: bytes in, the daemon's answer out.
final class RawControl {
    let fd: Int32

    init(_ d: TestDaemon) throws {
        fd = try UnixSocket.connect(path: d.socket).release().rawValue   // closed in deinit
        var tv = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// Sends what it can of `bytes` (the daemon may close before taking them all).
    func send(_ bytes: [UInt8], fds: [Int32] = []) {
        var at = 0
        var first = true
        while at < bytes.count {
            let n = bytes[at...].withUnsafeBytes { b in
                fds.withUnsafeBufferPointer { f in
                    umdev_sendmsg(fd, b.baseAddress, min(b.count, 4096), f.baseAddress, first ? Int32(f.count) : 0)
                }
            }
            guard n > 0 else { return }
            first = false
            at += n
        }
    }

    /// Everything until the daemon closes; nil when it closed without answering.
    func answer() -> ControlResponse? {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += chunk[0..<n]
        }
        return try? JSONDecoder().decode(ControlResponse.self, from: Data(out))
    }
}

@Suite("lifecycle daemon: a hostile control socket", .serialized)
struct DaemonHostilityTests {
    func raw(_ d: TestDaemon, _ text: String, fds: [Int32] = []) throws -> ControlResponse? {
        let c = try RawControl(d)
        c.send(Array(text.utf8), fds: fds)
        shutdown(c.fd, Int32(SHUT_WR))
        return c.answer()
    }

    @Test("malformed JSON, unknown requests, wrong types and stray descriptors get an error each")
    func malformed() throws {
        let d = try TestDaemon()
        let cases: [(String, String)] = [
            ("{not json\n", "malformed request"),
            ("\n", "malformed request"),
            ("[1, 2, 3]\n", "malformed request"),
            ("{\"request\": 5}\n", "malformed request"),
            ("{\"uuid\": \"x\"}\n", "malformed request"),
            ("{\"request\": \"explode\"}\n", "unknown request \"explode\""),
            ("{\"request\": \"start\", \"type\": \"mtty-1\", \"attrs\": \"port0=pty\"}\n", "malformed request"),
            ("{\"request\": \"start\", \"type\": \"mtty-1\", \"attrs\": [{\"port0\": \"pty\", \"port1\": \"pty\"}]}\n", "malformed request"),
            ("{\"request\": \"stop\"}\n", "this request needs a uuid"),
            ("{\"request\": \"stop\", \"uuid\": \"../../etc/passwd\"}\n", "is not a UUID"),
            ("{\"request\": \"attribute-get\", \"uuid\": \"0e0f1d2c-3b4a-4958-8776-a5b4c3d2e1f0\"}\n", "needs a name"),
            ("{\"request\": \"start\", \"type\": \"mbochs-large\", \"attrs\": [{\"display_socket\": \"relative\"}]}\n", "an absolute path"),
            ("{\"request\": \"modify\", \"uuid\": \"0e0f1d2c-3b4a-4958-8776-a5b4c3d2e1f0\"}\n", "modify needs"),
            ("{\"request\": \"types\"", "malformed request"),   // no newline, then end of stream
        ]
        for (text, expected) in cases {
            let r = try #require(try raw(d, text), "\(text)")
            #expect(!r.ok && r.error?.message.contains(expected) == true, "\(text): \(r.error?.message ?? "")")
        }
        #expect(try raw(d, "")?.error?.message == "empty request")
        // A descriptor on a request that takes none, or two on any request.
        let file = open("/dev/null", O_RDONLY)
        defer { close(file) }
        #expect(try raw(d, "{\"request\": \"types\"}\n", fds: [file])?.error?.message == "types takes no file descriptor")
        #expect(try raw(d, "{\"request\": \"migrate-load\"}\n", fds: [file, file])?.error?.message == "a request carries at most one descriptor")
        #expect(try raw(d, "{\"request\": \"types\"}\n")?.types?.count == Catalog.all.count)
        #expect(d.daemon!.instanceCount == 0)
    }

    @Test("a huge request is refused at 64 KiB, a huge field is just an error")
    func huge() throws {
        let d = try TestDaemon()
        let c = try RawControl(d)
        c.send([UInt8](repeating: 0x20, count: 1 << 20))
        #expect(c.answer()?.error?.message == "request larger than 64 KiB")
        let long = String(repeating: "x", count: 60_000)
        let r = try #require(try raw(d, "{\"request\": \"start\", \"type\": \"\(long)\"}\n"))
        #expect(r.error?.code == "not-found")
        #expect(try raw(d, "{\"request\": \"types\"}\n")?.ok == true)
    }

    @Test("a client that sends half a request and stalls is dropped; other clients and the devices carry on meanwhile")
    func stalled() throws {
        let d = try TestDaemon()
        let i = try d.start("mtty-2")
        let device = try VFIOUserClient(path: i.socket)
        try device.negotiate()
        let start = Date()
        var stallers: [RawControl] = []
        for _ in 0..<3 {
            let s = try RawControl(d)
            s.send(Array("{\"request\": \"li".utf8))
            stallers.append(s)
        }
        let silent = try RawControl(d)                           // connects, says nothing
        // Meanwhile: control requests are answered and the device works.
        for n in 0..<20 {
            #expect(try d.list().count == 1)
            try device.write8(region: 0, offset: 7, UInt8(n))
            #expect(try device.read8(region: 0, offset: 7) == UInt8(n))
        }
        #expect(Date().timeIntervalSince(start) < 2)
        for s in stallers + [silent] {
            let r = s.answer()
            #expect(r?.error?.message == "incomplete request: no newline within 5 s")
        }
        let waited = Date().timeIntervalSince(start)
        #expect(waited >= 4.5 && waited < 10)
        expectAlive(device)
        #expect(try d.list().count == 1)
    }

    @Test("more control clients than the daemon serves at once are refused promptly, then served again")
    func tooMany() throws {
        let d = try TestDaemon()
        var held: [RawControl] = []
        for _ in 0..<d.configuration.maxControlClients { held.append(try RawControl(d)) }
        // No pause needed: the daemon's one accept thread takes connections
        // in the order they queued on the listening socket, admitting each
        // held one (which, having sent nothing, stays for 5 s) before it
        // takes the extra one.
        let extra = try RawControl(d)
        let refused = extra.answer()
        #expect(refused?.error?.code == "busy")
        // The held ones finish their requests; the daemon serves newcomers again.
        // answer() reads to the end of the stream, and the daemon gives the
        // place back before it closes: the next request is admitted at once.
        for h in held {
            h.send(Array("{\"request\": \"list\"}\n".utf8))
            #expect(h.answer()?.ok == true)
        }
        #expect(try d.list().isEmpty)
    }
}
