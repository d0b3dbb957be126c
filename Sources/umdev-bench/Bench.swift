import ArgumentParser
import CommandSupport
import CMallocCounter
import Glibc
import Lifecycle
import MBochs
import Logging
import MTTY
import CShim
import PCI
import TestDevice
import VFIOUser
import VFIOUserClient
import VFIOUserServer
import Viewer

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Measure REGION_READ/REGION_WRITE round trips (the test device's scratch register by default).",
        discussion: """
        Without --socket, a device of --type is served in this process on a private socket
        and the figures include heap allocations per operation (server and client).
        With --socket, only the client runs here (to measure a server under strace or
        valgrind in another process). --region and --offset pick the register, e.g.
        --type mbochs-medium --region 2 --offset 0x50a --widths 2 for a DISPI register.
        """)

    @Option(help: "Round trips per measurement.") var iterations = 200_000
    @Option(help: "Serve nothing; drive the server at this socket.") var socket: String?
    @Option(help: "Only this case, e.g. read-1 or write-4.") var only: String?
    @Option(help: "Device type to serve in this process (without --socket).") var type = "test"
    @Option(help: "Region of the register to access.") var region: UInt32 = 0
    @Option(help: "Offset of the register (decimal or 0x hex); default the test device's scratch.",
            transform: { s in
                guard let v = s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s) else { throw ValidationError("bad offset '\(s)'") }
                return v
            })
    var offset: UInt64 = TestDevice.Register.scratch
    @Option(parsing: .upToNextOption, help: "Access widths in bytes.") var widths: [Int] = [1, 4, 8]
    @Flag(help: "Measure mtty instead: loopback throughput and interrupt latency.") var mtty = false
    @Flag(help: "Measure the display path instead: plane queries, 1080p snapshots, server RSS.") var display = false
    @Flag(help: "Measure the live viewers instead: VNC and web frame rates and bytes, idle CPU, stalled clients.") var viewers = false
    @Flag(help: "Measure the lifecycle daemon instead: RSS and threads with 0 to 108 instances.") var daemon = false
    @Flag(help: "Measure live upgrade instead: the blackout a busy client sees while `umdev serve --type TYPE` (with --daemon: a daemon of many instances) is upgraded by SIGUSR2.")
    var upgrade = false
    @Flag(help: "Measure a planned restart instead: SIGTERM to `umdev serve --type TYPE --fd-store` (with --daemon: a daemon), and a start with what the fd store kept, this process playing systemd.")
    var restart = false
    @Flag(help: "Measure a crash instead: kill -9 of `umdev serve --type TYPE --fd-store` (with --daemon: a daemon), and a start with what the fd store kept, this process playing systemd; the client gives up on a reply after 5 s, as QEMU does.")
    var crash = false
    @Option(help: "Upgrades (or restarts, or kills) --upgrade, --restart and --crash perform.") var upgrades = 100
    @Option(help: "With --upgrade --daemon: mtty-1 instances the daemon holds.") var mttyInstances = 100
    @Option(help: "With --upgrade --daemon: mbochs-large instances the daemon holds.") var mbochsInstances = 8
    @Flag(help: "Measure opt-in polling instead: mtty-2 round trips with and without --poll-us, beside --gpio if given.") var polling = false
    @Option(name: .customLong("poll-us"), help: "The spin time --polling uses.") var pollMicroseconds = 50
    @Option(help: ArgumentHelp("A build of libvfio-user's gpio-pci-idio-16 sample, measured beside umdev by --polling.", valueName: "path"))
    var gpio: String?

    func run() throws {
        umdev_malloc_counter_link()
        signal(SIGPIPE, SIG_IGN)
        if mtty { return try benchMTTY() }
        if display { return try benchDisplay() }
        if viewers { return try benchViewers() }
        if upgrade { return try benchUpgrade() }
        if restart { return try benchRestart() }
        if crash { return try benchCrash() }
        if daemon { return try benchDaemon() }
        if polling { return try benchPolling() }
        var server: DeviceServer?
        let path: String
        if let socket {
            path = socket
        } else {
            path = "/tmp/umdev-bench-\(getpid()).sock"
            guard let kind = Catalog.type(type) else { throw ValidationError("unknown device type '\(type)'") }
            let device = try kind.make(Attributes())
            var logger = Logger(label: "bench")
            logger.logLevel = .error
            server = try DeviceServer(host: DeviceHost(device: device, typeName: kind.id), path: path, logger: logger)
            server?.start()
        }
        defer { server?.stop() }
        let client = try VFIOUserClient(path: path)
        try client.negotiate()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 8)
        defer { buffer.deallocate() }
        memset(buffer.baseAddress!, 0x5a, 8)
        print("case       ops/s      p50 ns   p99 ns   allocs/op   rss KiB")
        for write in [false, true] {
            for size in widths where (1...8).contains(size) {
                let name = "\(write ? "write" : "read")-\(size)"
                if let only, only != name { continue }
                let io = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<size])
                func once() throws {
                    if write {
                        try client.write(region: region, offset: offset, from: UnsafeRawBufferPointer(io))
                    } else {
                        try client.read(region: region, offset: offset, into: io)
                    }
                }
                for _ in 0..<1000 { try once() } // warm up
                var samples = [UInt64](repeating: 0, count: iterations)
                let mallocsBefore = umdev_malloc_count()
                let start = now()
                for i in 0..<iterations {
                    let t0 = now()
                    try once()
                    samples[i] = now() - t0
                }
                let elapsed = now() - start
                let mallocs = umdev_malloc_count() - mallocsBefore
                samples.sort()
                let opsPerSecond = Double(iterations) / (Double(elapsed) / 1e9)
                let allocs = socket == nil && umdev_malloc_counter_active() != 0 ? String(format2(Double(mallocs) / Double(iterations))) : "n/a"
                print(pad(name, 9), pad(String(Int(opsPerSecond)), 9), pad(String(samples[iterations / 2]), 8),
                      pad(String(samples[iterations * 99 / 100]), 8), pad(allocs, 11), pad(String(rssKiB()), 9))
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
func now() -> UInt64 { monotonicNanoseconds() }

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }

func format2(_ v: Double) -> String {
    let scaled = Int((v * 100).rounded())
    let frac = scaled % 100
    return "\(scaled / 100).\(frac < 10 ? "0" : "")\(frac)"
}

/// Resident set size from /proc/self/statm.
func rssKiB() -> Int {
    guard let f = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(f) }
    var size = 0, resident = 0
    _ = withUnsafeMutablePointer(to: &size) { s in
        withUnsafeMutablePointer(to: &resident) { r in
            withVaList([s, r]) { vfscanf(f, "%ld %ld", $0) }
        }
    }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE))) / 1024
}

extension Bench {
    /// mtty-1 served in-process. Each round: the guest writes a byte to THR
    /// (REGION_WRITE), the echo raises INTx (eventfd), the guest reads RBR and
    /// unmasks, as QEMU under TCG would. Latency is from sending the THR write
    /// to the eventfd being readable.
    func benchMTTY() throws {
        let path = "/tmp/umdev-bench-mtty-\(getpid()).sock"
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let server = try DeviceServer(host: DeviceHost(device: try MTTY(ports: 1), typeName: "mtty-1"), path: path, logger: logger)
        server.start()
        defer { server.stop() }
        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        let intx = umdev_eventfd(0)
        defer { close(intx) }
        try c.setIRQs(index: IRQIndex.intx.wire, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [intx])
        // Port 0's registers are BAR0 (I/O), at the UART's own offsets.
        typealias UART = UART16550.Register
        let port0 = UInt32(RegionIndex.bar0)
        try c.write8(region: port0, offset: UInt64(UART.interruptIdentification), UART16550.fcrEnable) // FCR: FIFO on, trigger 1
        try c.write8(region: port0, offset: UInt64(UART.interruptEnable), UART16550.ierReceivedData)
        let rounds = min(iterations, 50_000)
        // The baseline: a plain 1-byte REGION_WRITE round trip (the scratch register).
        var plain = [UInt64](repeating: 0, count: rounds)
        for i in 0..<rounds {
            let t0 = now()
            try c.write8(region: port0, offset: UInt64(UART.scratch), UInt8(truncatingIfNeeded: i))
            plain[i] = now() - t0
        }
        var latency = [UInt64](repeating: 0, count: rounds)
        var one: UInt8 = 0
        var counter: UInt64 = 0
        let start = now()
        for i in 0..<rounds {
            one = UInt8(truncatingIfNeeded: i)
            // Posted, as QEMU sends MMIO writes: the time is the device's,
            // from the THR write leaving to the interrupt's eventfd firing.
            let t0 = now()
            try withUnsafeBytes(of: &one) { try c.write(region: port0, offset: UInt64(UART.data), from: $0, posted: true) }
            var p = pollfd(fd: intx, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 1000) == 1 else { throw ValidationError("no interrupt for byte \(i)") }
            latency[i] = now() - t0
            _ = read(intx, &counter, 8)
            var got: UInt8 = 0
            try withUnsafeMutableBytes(of: &got) { try c.read(region: port0, offset: UInt64(UART.data), into: $0) }
            guard got == one else { throw ValidationError("byte \(i) came back as \(got)") }
            try c.setIRQs(index: IRQIndex.intx.wire, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        }
        let elapsed = now() - start
        latency.sort()
        plain.sort()
        print("mtty-1 loopback, \(rounds) bytes, one interrupt each")
        print("  throughput        \(Int(Double(rounds) / (Double(elapsed) / 1e9))) bytes/s")
        print("  1-byte REGION_WRITE round trip p50 \(plain[rounds / 2]) ns, p99 \(plain[rounds * 99 / 100]) ns")
        print("  interrupt latency p50 \(latency[rounds / 2]) ns, p99 \(latency[rounds * 99 / 100]) ns (posted THR write to eventfd)")
        print("  ratio             \(format2(Double(latency[rounds / 2]) / Double(plain[rounds / 2]))) × the write round trip (p50)")
    }
}

extension Bench {
    /// An mbochs-large served by a child `umdev serve` (so its RSS is its
    /// own), a guest on the device socket setting 1920x1080 and drawing, and
    /// a viewer on the display socket: plane-query round trips, the time to
    /// map and convert a 1080p plane, PNG encoding, and the server's RSS
    /// before and after the snapshot.
    func benchDisplay() throws {
        let path = "/tmp/umdev-bench-display-\(getpid()).sock"
        let server = try ChildServer(type: "mbochs-large", socket: path)
        defer { server.stop() }
        let guest = try VFIOUserClient(path: path)
        try guest.negotiate()
        let (w, h) = (1920, 1080)
        let vram = try guest.regionInfo(UInt32(MBochs.vramRegion))
        for r in DispiRegisters.modeSet(width: w, height: h, vramSize: vram.size) {
            try guest.write16(region: UInt32(MBochs.mmioRegion), offset: r.offset, r.value)
        }
        guard let p = mmap(nil, Int(vram.size), PROT_READ | PROT_WRITE, MAP_SHARED, vram.fd, 0), p != MAP_FAILED else {
            throw CommandFailure("cannot map VRAM")
        }
        TestPattern.drawXRGB(into: p, width: w, height: h, stride: w * 4, seed: 3)
        munmap(p, Int(vram.size))
        let before = server.rss()

        let viewer = try VFIOUserClient(path: path + ".display")
        try viewer.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
        let queries = min(iterations, 20_000)
        var samples = [UInt64](repeating: 0, count: queries)
        for _ in 0..<500 { _ = try viewer.queryPlane(flags: VFIO.gfxPlaneDmabuf) }
        let start = now()
        for i in 0..<queries {
            let t0 = now()
            _ = try viewer.queryPlane(flags: VFIO.gfxPlaneDmabuf)
            samples[i] = now() - t0
        }
        let elapsed = now() - start
        samples.sort()
        print("display path: mbochs-large, 1920x1080 XRGB8888, viewer on the display socket")
        print("  QUERY_GFX_PLANE     \(Int(Double(queries) / (Double(elapsed) / 1e9))) queries/s, p50 \(samples[queries / 2]) ns, p99 \(samples[queries * 99 / 100]) ns")

        let mapping = try PlaneMapping(client: viewer)
        var t0 = now()
        guard let first = try mapping.refresh() else { throw CommandFailure("the plane is disabled") }
        let firstMap = now() - t0
        var converts: [UInt64] = [], refreshes: [UInt64] = []
        var image: RGBImage?
        for _ in 0..<20 {
            t0 = now()
            guard let frame = try mapping.refresh() else { throw CommandFailure("the plane went away") }
            let t1 = now()
            image = PixelFormat.rgb(frame)
            converts.append(now() - t1)
            refreshes.append(t1 - t0)
        }
        converts.sort(); refreshes.sort()
        guard let image, image == TestPattern.image(width: w, height: h, seed: 3) else { throw CommandFailure("the snapshot differs from the pattern") }
        var encodes: [UInt64] = []
        var pngBytes = 0
        for _ in 0..<5 {
            t0 = now()
            pngBytes = try PNG.encode(image).count
            encodes.append(now() - t0)
        }
        encodes.sort()
        let after = server.rss()
        func ms(_ ns: UInt64) -> String { format2(Double(ns) / 1e6) + " ms" }
        print("  first map           \(ms(firstMap)) (query + GET_GFX_DMABUF + mmap of \(first.byteCount) bytes)")
        print("  refresh (mapped)    \(ms(refreshes[10])) median (query; the buffer stays mapped)")
        print("  convert to RGB      \(ms(converts[10])) median")
        print("  PNG encode          \(ms(encodes[2])) median, \(pngBytes) bytes")
        print("  server RSS          \(before.total) KiB before (shmem \(before.shmem)), \(after.total) KiB after the snapshot (shmem \(after.shmem))")
        print("  viewer RSS          \(rssKiB()) KiB")
    }
}

/// `umdev serve` in a child process, for figures that must not mix with the client's.
final class ChildServer {
    let process: ChildProcess
    let socket: String
    var pid: pid_t { process.pid }

    /// Waits for the display socket too: display types are what it serves.
    init(type: String, socket: String) throws {
        self.socket = socket
        process = try ChildProcess(["serve", "--type", type, "--socket", socket, "--log-level", "error"])
        for _ in 0..<500 where access(socket + ".display", F_OK) != 0 { usleep(10_000) }
    }

    /// VmRSS and RssShmem in KiB.
    func rss() -> (total: Int, shmem: Int) {
        guard let f = fopen("/proc/\(pid)/status", "r") else { return (-1, -1) }
        defer { fclose(f) }
        var total = -1, shmem = -1
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), f) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let value = Int(text.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? -1
            if text.hasPrefix("VmRSS:") { total = value }
            if text.hasPrefix("RssShmem:") { shmem = value }
        }
        return (total, shmem)
    }

    func stop() { process.stop() }
}
