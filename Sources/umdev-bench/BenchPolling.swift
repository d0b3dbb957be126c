import Glibc
import MTTY
import PCI
import VFIOUser
import VFIOUserClient

/// `umdev bench --polling`: 1-byte REGION_READ round trips against servers
/// in child processes, each measured the same way by the same client:
/// umdev without and with `--poll-us`, and libvfio-user's gpio sample when
/// `--gpio PATH` names a build of it. Reports ops/s, p50/p99 and the CPU the
/// server and this client used per second of wall time.
extension Bench {
    func benchPolling() throws {
        let dir = "/tmp/umdev-bench-poll-\(getpid())"
        mkdir(dir, 0o700)
        defer { rmdir(dir) }
        struct Case { var name: String; var argv: [String]; var region: UInt32; var offset: UInt64 }
        var cases = [
            Case(name: "umdev mtty-2", argv: [umdevExecutable, "serve", "--type", "mtty-2", "--log-level", "error", "--socket"],
                 region: UInt32(RegionIndex.bar0), offset: UInt64(UART16550.Register.scratch)),
            Case(name: "umdev mtty-2 --poll-us \(pollMicroseconds)",
                 argv: [umdevExecutable, "serve", "--type", "mtty-2", "--log-level", "error", "--poll-us", "\(pollMicroseconds)", "--socket"],
                 region: UInt32(RegionIndex.bar0), offset: UInt64(UART16550.Register.scratch)),
        ]
        if let gpio {
            cases.append(Case(name: "libvfio-user gpio-pci-idio-16", argv: [gpio], region: 2, offset: 1))
        }
        let rounds = max(10_000, iterations)
        print("1-byte REGION_READ round trips, \(rounds) each, one client (this process), servers in child processes")
        print("server                                 ops/s    p50 ns   p99 ns   server CPU   client CPU")
        for c in cases {
            let socket = "\(dir)/\(cases.firstIndex { $0.name == c.name }!).sock"
            let child = try ChildProcess(Array(c.argv.dropFirst()) + [socket], executable: c.argv[0])
            defer { child.stop(); unlink(socket) }
            for _ in 0..<500 where access(socket, F_OK) != 0 { usleep(10_000) }
            let client = try VFIOUserClient(path: socket)
            try client.negotiate()
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
            defer { buffer.deallocate() }
            for _ in 0..<2000 { try client.read(region: c.region, offset: c.offset, into: buffer) }
            var samples = [UInt64](repeating: 0, count: rounds)
            let serverCPU0 = child.cpuSeconds(), clientCPU0 = selfCPUSeconds()
            let start = now()
            for i in 0..<rounds {
                let t0 = now()
                try client.read(region: c.region, offset: c.offset, into: buffer)
                samples[i] = now() - t0
            }
            let wall = Double(now() - start) / 1e9
            let serverCPU = (child.cpuSeconds() - serverCPU0) / wall * 100
            let clientCPU = (selfCPUSeconds() - clientCPU0) / wall * 100
            samples.sort()
            print(c.name.padding(toLength: 37, withPad: " ", startingAt: 0) + pad(String(Int(Double(rounds) / wall)), 8)
                  + pad(String(samples[rounds / 2]), 10) + pad(String(samples[rounds * 99 / 100]), 9)
                  + pad(format2(serverCPU) + " %", 13) + pad(format2(clientCPU) + " %", 13))
        }
    }
}

/// User + system CPU seconds this process has used.
func selfCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}
