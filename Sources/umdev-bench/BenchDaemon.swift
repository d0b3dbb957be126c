import CommandSupport
import Glibc
import Lifecycle

/// `umdev bench --daemon`: what a daemon costs with many instances. Each
/// case runs a fresh `umdev daemon` in a child process (so the figures are
/// the daemon's alone), starts its instances over the control socket, lets
/// it settle, and reads /proc/PID/status.
extension Bench {
    func benchDaemon() throws {
        let cases: [(name: String, budgets: [String], instances: [(String, Int)])] = [
            ("no instances", [], []),
            ("24 mtty-1", [], [("mtty-1", 24)]),
            ("100 mtty-1", ["mtty=100"], [("mtty-1", 100)]),
            ("4 mbochs-large, idle", [], [("mbochs-large", 4)]),
            ("100 mtty-1 + 8 mbochs-large", ["mtty=100", "mbochs=512"], [("mtty-1", 100), ("mbochs-large", 8)]),
            ("1000 mtty-1", ["mtty=1000"], [("mtty-1", 1000)]),
        ]
        print("daemon: one `umdev daemon` process per case; instances started over the control socket, then idle 1 s; idle CPU over 5 s")
        print("case                            RSS KiB   anon KiB  shmem KiB  threads   start p50 ms  start p99 ms  idle CPU %")
        for c in cases {
            let dir = "/tmp/umdev-bench-daemon-\(getpid())"
            let run = dir + "/run", config = dir + "/config"
            let daemon = try ChildProcess(["daemon", "--run-dir", run, "--config-dir", config, "--log-level", "error"]
                                          + c.budgets.flatMap { ["--budget", $0] })
            defer {
                daemon.stop()
                _ = system("rm -rf '\(dir)'")
            }
            for _ in 0..<500 where access(run + "/control.sock", F_OK) != 0 { usleep(10_000) }
            var starts: [UInt64] = []
            for (type, count) in c.instances {
                for _ in 0..<count {
                    var request = ControlRequest("start")
                    request.type = type
                    let t0 = now()
                    let answer = try ControlWire.call(request, path: run + "/control.sock")
                    starts.append(now() - t0)
                    guard answer.ok else { throw CommandFailure("\(c.name): \(answer.error?.message ?? "start refused")") }
                }
            }
            usleep(1_000_000)
            let status = processStatus(daemon.pid)
            let cpu = daemon.cpuSeconds()
            usleep(5_000_000)
            let idle = (daemon.cpuSeconds() - cpu) / 5 * 100
            starts.sort()
            let p50 = starts.isEmpty ? "-" : format2(Double(starts[starts.count / 2]) / 1e6)
            let p99 = starts.isEmpty ? "-" : format2(Double(starts[min(starts.count - 1, starts.count * 99 / 100)]) / 1e6)
            print(c.name.padding(toLength: 30, withPad: " ", startingAt: 0)
                  + pad("\(status["VmRSS"] ?? -1)", 9) + pad("\(status["RssAnon"] ?? -1)", 11)
                  + pad("\(status["RssShmem"] ?? -1)", 11) + pad("\(status["Threads"] ?? -1)", 9) + pad(p50, 15)
                  + pad(p99, 14) + pad(format2(idle), 12))
        }
    }
}

/// The numeric fields of /proc/PID/status (sizes in KiB).
func processStatus(_ pid: pid_t) -> [String: Int] {
    guard let f = fopen("/proc/\(pid)/status", "r") else { return [:] }
    defer { fclose(f) }
    var out: [String: Int] = [:]
    var line = [CChar](repeating: 0, count: 512)
    while fgets(&line, Int32(line.count), f) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let parts = text.split(whereSeparator: { $0 == ":" || $0 == " " || $0 == "\t" || $0 == "\n" })
        if parts.count >= 2, let v = Int(parts[1]) { out[String(parts[0])] = v }
    }
    return out
}
