import CommandSupport
import Foundation
import Glibc
import Synchronization
import VFIOUserClient

/// `umdev-bench --upgrade`: the blackout a live upgrade costs a busy client.
/// A `umdev serve` child serves the device; one client thread sends 1-byte
/// REGION_READs back to back and records each round trip; the main thread
/// sends SIGUSR2 and waits for the new process's READY=1, `--upgrades`
/// times. An upgrade's blackout is the longest round trip that started
/// while it ran: the time a request waited because of it. The server's
/// log gives where the time went.
extension Bench {
    func benchUpgrade() throws {
        let dir = "/tmp/umdev-bench-upgrade-\(getpid())"
        mkdir(dir, 0o700)
        defer { _ = system("rm -rf '\(dir)'") }
        let path = dir + "/device.sock", log = dir + "/log"
        let notify = try DatagramListener(path: dir + "/notify")
        let server = try ChildProcess(["serve", "--type", type, "--socket", path, "--log-level", "info"],
                                      environment: ["NOTIFY_SOCKET": notify.path], stderrPath: log)
        defer { server.stop() }
        guard notify.waitReady(seconds: 30) else { throw CommandFailure("umdev serve did not say READY=1") }
        let client = try VFIOUserClient(path: path)
        try client.negotiate()

        // Round trips as (start, duration) in ns, preallocated: the streamer allocates nothing.
        let capacity = 4_000_000
        let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
        let durations = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
        defer { starts.deallocate(); durations.deallocate() }
        let count = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        let failed = Mutex<String?>(nil)
        nonisolated(unsafe) let c = client
        nonisolated(unsafe) let s = starts, d = durations
        let region = self.region, offset = self.offset
        let streamer = Thread {
            var buffer: UInt8 = 0
            var n = 0
            while !stop.load(ordering: .relaxed) && n < capacity {
                let t0 = now()
                do {
                    try withUnsafeMutableBytes(of: &buffer) { try c.read(region: region, offset: offset, into: $0) }
                } catch {
                    failed.withLock { $0 = "\(error)" }
                    return
                }
                s[n] = t0
                d[n] = now() - t0
                n += 1
                count.store(n, ordering: .releasing)
            }
        }
        streamer.start()
        var windows: [(from: UInt64, to: UInt64)] = []
        print("upgrade: `umdev serve --type \(type)` upgraded \(upgrades) times by SIGUSR2 while one client sends 1-byte REGION_READs back to back")
        for _ in 0..<upgrades {
            // Steady traffic before each upgrade.
            let before = count.load(ordering: .acquiring)
            while count.load(ordering: .acquiring) < before + 200, failed.withLock({ $0 == nil }) { usleep(200) }
            let t0 = now()
            kill(server.pid, SIGUSR2)
            guard notify.waitReady(seconds: 30) else { throw CommandFailure("the upgraded umdev did not say READY=1") }
            windows.append((t0, now()))
            if let why = failed.withLock({ $0 }) { throw CommandFailure("a request failed during the upgrades: \(why)") }
        }
        // Let the requests in flight at the last READY=1 finish.
        let last = count.load(ordering: .acquiring)
        while count.load(ordering: .acquiring) < last + 200, failed.withLock({ $0 == nil }) { usleep(200) }
        stop.store(true, ordering: .relaxed)
        while !streamer.isFinished { usleep(1000) }
        if let why = failed.withLock({ $0 }) { throw CommandFailure("a request failed during the upgrades: \(why)") }
        let total = count.load(ordering: .acquiring)

        // Each upgrade's blackout: the longest round trip that started in its window.
        var blackouts: [UInt64] = []
        var k = 0
        for w in windows {
            var worst: UInt64 = 0
            while k < total && starts[k] < w.from { k += 1 }
            var j = k
            while j < total && starts[j] <= w.to { worst = max(worst, durations[j]); j += 1 }
            blackouts.append(worst)
        }
        var steady = (0..<total).map { durations[$0] }
        steady.sort()
        blackouts.sort()
        let signalled = windows.map { $0.to - $0.from }.sorted()
        func ms(_ ns: UInt64) -> String { format2(Double(ns) / 1e6) }
        func pct(_ v: [UInt64], _ p: Double) -> UInt64 { v.isEmpty ? 0 : v[min(v.count - 1, Int(Double(v.count) * p))] }
        print("requests answered      \(total), none lost or failed")
        print("steady round trip      p50 \(format2(Double(pct(steady, 0.5)) / 1e3)) µs")
        print("blackout (ms)          p50 \(ms(pct(blackouts, 0.5)))  p99 \(ms(pct(blackouts, 0.99)))  max \(ms(blackouts.last ?? 0))")
        print("SIGUSR2 to READY=1     p50 \(ms(pct(signalled, 0.5)))  p99 \(ms(pct(signalled, 0.99)))  (includes the check, served meanwhile)")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        for key in ["check_ms", "pause_ms", "startup_ms", "restore_ms", "total_ms"] {
            var values: [Double] = []
            for line in text.split(separator: "\n") {
                guard let r = line.range(of: key + "=") else { continue }
                let rest = line[r.upperBound...].prefix { $0.isNumber || $0 == "." }
                if let v = Double(rest) { values.append(v) }
            }
            values.sort()
            guard !values.isEmpty else { continue }
            let what = ["check_ms": "check (new binary reads a handover, old serves)",
                        "pause_ms": "stop between requests, write the handover",
                        "startup_ms": "exec, dynamic loading, runtime start",
                        "restore_ms": "restore (parse, rebuild, re-map)",
                        "total_ms": "handover written to serving again"][key]!
            print("  \(what.padding(toLength: 48, withPad: " ", startingAt: 0)) p50 \(format2(values[values.count / 2])) ms"
                  + "  max \(format2(values.last!)) ms")
        }
    }
}

/// The service manager's end of sd_notify(3): a datagram socket whose
/// messages are read for READY=1.
final class DatagramListener {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0 else { throw CommandFailure("cannot bind \(path): \(String(cString: strerror(errno)))") }
    }

    /// Waits for a datagram carrying READY=1.
    func waitReady(seconds: Double) -> Bool {
        let deadline = now() + UInt64(seconds * 1e9)
        var buf = [UInt8](repeating: 0, count: 4096)
        while now() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = recv(fd, &buf, buf.count, 0)
            if n > 0, String(decoding: buf[0..<n], as: UTF8.self).split(separator: "\n").contains("READY=1") { return true }
        }
        return false
    }

    deinit { close(fd); unlink(path) }
}
