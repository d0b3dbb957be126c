import Foundation
import Glibc
import Testing
import VFIOUserClient

// Waiting for an event rather than for time: each helper blocks in poll(2)
// on the descriptor the event arrives on, with a generous deadline that only
// a broken product ever reaches (and then the test fails saying what it was
// waiting for).

/// Milliseconds left until `deadline` (monotonic), for poll(2); 0 once past.
private func millisecondsLeft(_ deadline: DispatchTime) -> Int32 {
    let now = DispatchTime.now().uptimeNanoseconds
    guard deadline.uptimeNanoseconds > now else { return 0 }
    return Int32(min((deadline.uptimeNanoseconds - now + 999_999) / 1_000_000, UInt64(Int32.max)))
}

/// Waits until `fd` has `events` (POLLIN by default) or `seconds` pass;
/// retries EINTR. Returns the revents, 0 on timeout.
@discardableResult
func pollFor(_ fd: Int32, events: Int16 = Int16(POLLIN), seconds: Double) -> Int16 {
    let deadline = DispatchTime.now() + seconds
    while true {
        var p = pollfd(fd: fd, events: events, revents: 0)
        let r = poll(&p, 1, millisecondsLeft(deadline))
        if r > 0 { return p.revents }
        if r == 0 || errno != EINTR { return 0 }
    }
}

/// The service manager's end of the notification protocol (sd_notify(3)):
/// a datagram socket a child is told about in `$NOTIFY_SOCKET`, on which
/// `umdev serve`, `umdev daemon` and `umdev view --wait-change` say
/// READY=1 once they are doing their job.
final class NotifySocket {
    let path: String
    private let fd: Int32

    init() throws {
        path = "/tmp/umdev-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError.system(errno, "socket") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let e = errno
            close(fd)
            throw ClientError.system(e, "bind \(path)")
        }
    }

    /// The variable to give the child.
    var environment: [String: String] { ["NOTIFY_SOCKET": path] }

    /// Reads and drops what has come, as a manager that keeps up would:
    /// a queue left full makes each notification wait for room.
    func drain() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT)) > 0 {}
    }

    /// Waits for a notification carrying READY=1 and returns its text;
    /// records an issue naming `what` when none came within `seconds`, or
    /// when `exited` (checked every 100 ms, a child's own end being no
    /// notification) says the child is gone.
    @discardableResult
    func waitReady(_ what: String, seconds: Double = 20, exited: () -> Bool = { false },
                   sourceLocation: SourceLocation = #_sourceLocation) -> String? {
        let deadline = DispatchTime.now() + seconds
        var buf = [UInt8](repeating: 0, count: 4096)
        while DispatchTime.now() < deadline {
            if pollFor(fd, seconds: min(0.1, Double(millisecondsLeft(deadline)) / 1000)) & Int16(POLLIN) != 0 {
                let n = recv(fd, &buf, buf.count, 0)
                guard n > 0 else { continue }
                let text = String(decoding: buf[0..<n], as: UTF8.self)
                if text.split(separator: "\n").contains("READY=1") { return text }
            } else if exited() {
                Issue.record("\(what) exited without saying READY=1", sourceLocation: sourceLocation)
                return nil
            }
        }
        Issue.record("\(what) did not say READY=1 within \(seconds) s", sourceLocation: sourceLocation)
        return nil
    }

    deinit {
        close(fd)
        unlink(path)
    }
}

/// The client leaves as QEMU does, and this returns once the server has
/// seen it go: the client shuts down its sending side, so the server's
/// session reads the end of the stream, releases the device and only then
/// closes its end (DeviceServer's `release`), which is the end of stream
/// this waits for. Anything the server still sends is read and dropped.
/// False when the server has not closed within `seconds`.
func leave(_ client: VFIOUserClient, seconds: Double = 20) -> Bool {
    shutdown(client.socket, Int32(SHUT_WR))
    let deadline = DispatchTime.now() + seconds
    var buf = [UInt8](repeating: 0, count: 4096)
    while DispatchTime.now() < deadline {
        guard pollFor(client.socket, seconds: Double(millisecondsLeft(deadline)) / 1000) != 0 else { return false }
        let n = recv(client.socket, &buf, buf.count, Int32(MSG_DONTWAIT))
        if n == 0 { return true }
        if n < 0 && errno == ECONNRESET { return true }   // it closed with our bytes unread: gone all the same
        if n < 0 && errno != EINTR && errno != EAGAIN { return false }
    }
    return false
}
