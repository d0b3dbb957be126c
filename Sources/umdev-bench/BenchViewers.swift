import ArgumentParser
import CommandSupport
import Glibc
import ServiceManager
import MBochs
import Locking
import VFIOUser
import VFIOUserClient
import Viewer

/// `umdev bench --viewers`: the live viewers measured as their users see
/// them, with an mbochs-large at 1920x1080 in a child `umdev serve`, a
/// child `umdev view --vnc --http` on its display socket, a guest (this
/// process, holding the device socket) changing the picture, and minimal
/// RFB and WebSocket clients counting what arrives.
extension Bench {
    func benchViewers() throws {
        let dir = "/tmp/umdev-bench-viewers-\(getpid())"
        mkdir(dir, 0o700)
        defer { rmdir(dir) }
        let device = dir + "/mbochs.sock"
        let server = try ChildServer(type: "mbochs-large", socket: device)
        defer { server.stop() }
        let guest = try BenchGuest(socket: device, width: 1920, height: 1080)
        print("live viewers: mbochs-large, 1920x1080 XRGB8888; a guest changes the picture every 16 ms; viewers look every 30 ms")

        for tiles in ["raw", "png"] {
            let vncPort = freePort(), httpPort = freePort()
            let view = try ChildProcess(["view", "--socket", device + ".display", "--vnc", "127.0.0.1:\(vncPort)",
                                         "--http", "127.0.0.1:\(httpPort)", "--http-tiles", tiles, "--log-level", "error"])
            defer { view.stop() }
            try waitForPort(vncPort); try waitForPort(httpPort)
            usleep(300_000)
            if tiles == "raw" {
                // Idle: a second without change slows the looks to --idle-interval (250 ms); beside it, a
                // viewer that looks every 30 ms regardless, as all did before.
                let steady = try ChildProcess(["view", "--socket", device + ".display", "--vnc", "127.0.0.1:\(freePort())",
                                               "--idle-interval", "30", "--log-level", "error"])
                defer { steady.stop() }
                usleep(1_500_000)
                let cpu = view.cpuSeconds(), steadyCPU = steady.cpuSeconds()
                usleep(5_000_000)
                let idle = (view.cpuSeconds() - cpu) / 5 * 100, always = (steady.cpuSeconds() - steadyCPU) / 5 * 100
                print("  viewer CPU, nothing changing:   \(format2(idle)) % of one core (one 1080p plane, tiles compared every 250 ms"
                      + " once idle for 1 s); \(format2(always)) % looking every 30 ms regardless (--idle-interval 30)")
                let seen = try guest.firstChangeSeen(vncPort: vncPort)
                print("  first change after idling:      seen by a VNC client \(format2(Double(seen) / 1e6)) ms after the guest drew it"
                      + " (at most --idle-interval + one frame)")
                for (name, change) in [("full screen", BenchGuest.Change.fullScreen), ("64x64", .tile)] {
                    let r = try guest.whileChanging(change) { try VNCCounter(port: vncPort).count(seconds: 4) }
                    print("  VNC, \(pad(name, 11)) change:   \(format2(r.frames)) frames/s, \(Int(r.bytes / 1024)) KiB/s")
                }
            }
            for (name, change) in [("full screen", BenchGuest.Change.fullScreen), ("64x64", .tile)] {
                let r = try guest.whileChanging(change) { try WebCounter(port: httpPort).count(seconds: 4) }
                print("  web (\(tiles) tiles), \(pad(name, 11)) change: \(format2(r.frames)) frames/s, \(Int(r.bytes / 1024)) KiB/s")
            }
            if tiles == "raw" {
                // REGION_WRITE round trips on the device socket, with and
                // without a VNC and a WebSocket client that stopped reading.
                let quiet = try guest.writeLatency()
                let stalledVNC = try StalledClient.vnc(port: vncPort)
                let stalledWeb = try StalledClient.webSocket(port: httpPort)
                let stalled = try guest.whileChanging(.fullScreen) { () throws -> (p50: UInt64, p99: UInt64) in
                    usleep(1_000_000)
                    return try guest.writeLatency()
                }
                print("  REGION_WRITE (2 bytes) round trip: p50 \(quiet.p50) ns, p99 \(quiet.p99) ns with viewers idle;"
                      + " p50 \(stalled.p50) ns, p99 \(stalled.p99) ns with a stalled VNC and a stalled WebSocket client"
                      + " while the screen changes (\(stalledVNC.queued + stalledWeb.queued) bytes left unread)")
                let after = try guest.whileChanging(.tile) { try VNCCounter(port: vncPort).count(seconds: 2) }
                print("  VNC beside the stalled clients:   \(format2(after.frames)) frames/s (64x64 change)")
            }
        }
    }
}

/// This process as the guest: the device socket (for register round
/// trips) and VRAM mapped (to draw as a guest would).
final class BenchGuest: @unchecked Sendable {
    // @unchecked: the drawing thread writes VRAM only; the socket is used by the caller's thread.
    enum Change { case fullScreen, tile }
    let client: VFIOUserClient
    let vram: UnsafeMutableRawPointer
    let vramSize: Int
    let width: Int, height: Int
    private var pattern = [[UInt8]]()
    private let stop = Locked(false)

    init(socket: String, width: Int, height: Int) throws {
        client = try VFIOUserClient(path: socket)
        try client.negotiate()
        self.width = width; self.height = height
        let info = try client.regionInfo(UInt32(MBochs.vramRegion))
        for r in DispiRegisters.modeSet(width: width, height: height, vramSize: info.size) {
            try client.write16(region: UInt32(MBochs.mmioRegion), offset: r.offset, r.value)
        }
        vramSize = Int(info.size)
        guard let p = mmap(nil, vramSize, PROT_READ | PROT_WRITE, MAP_SHARED, info.fd, 0), p != MAP_FAILED else {
            throw CommandFailure("cannot map VRAM")
        }
        vram = p
        // Three pictures in turn, so that any two looks 30 ms apart see different ones.
        for seed in [1, 2, 3] as [UInt8] {
            var frame = [UInt8](repeating: 0, count: width * height * 4)
            frame.withUnsafeMutableBytes { TestPattern.drawXRGB(into: $0.baseAddress!, width: width, height: height, stride: width * 4, seed: seed) }
            pattern.append(frame)
        }
        pattern[0].withUnsafeBytes { vram.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    deinit { munmap(vram, vramSize) }

    /// Runs `body` while a thread changes the picture every 16 ms.
    func whileChanging<T>(_ change: Change, _ body: () throws -> T) throws -> T {
        stop.withLock { $0 = false }
        guard let t = Threads.start({ [self] in
            var n = 0
            while !stop.withLock({ $0 }) {
                draw(change, n)
                n += 1
                usleep(16_000)
            }
        }) else { throw CommandFailure("cannot start the drawing thread") }
        defer { stop.withLock { $0 = true }; pthread_join(t, nil) }
        return try body()
    }

    private func draw(_ change: Change, _ n: Int) {
        switch change {
        case .fullScreen:
            pattern[n % 3].withUnsafeBytes { vram.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        case .tile:
            let value = UInt32(truncatingIfNeeded: n) & 0xff_ffff   // a new colour every time
            for y in 500..<564 { for x in 900..<964 { vram.storeBytes(of: value, toByteOffset: y * width * 4 + x * 4, as: UInt32.self) } }
        }
    }

    /// After the viewer has seen nothing change for 1.5 s, the time from the
    /// guest drawing a 64x64 tile to a VNC client receiving it: the worst of 5.
    func firstChangeSeen(vncPort: Int) throws -> UInt64 {
        let fd = try tcpConnect(vncPort)
        defer { close(fd) }
        let (width, height) = try rfbHandshake(fd)
        func update() throws {
            let type = try readFully(fd, 1)[0]
            guard type == 0 else { throw CommandFailure("unexpected RFB message \(type)") }
            let header = try readFully(fd, 3)
            for _ in 0..<(Int(header[1]) << 8 | Int(header[2])) {
                let r = try readFully(fd, 12)
                let w = Int(r[4]) << 8 | Int(r[5]), h = Int(r[6]) << 8 | Int(r[7])
                if r[8...11].elementsEqual([0, 0, 0, 0]) { _ = try readFully(fd, w * h * 4) }
            }
        }
        rfbRequest(fd, incremental: false, width: width, height: height)
        try update()
        var worst: UInt64 = 0
        for n in 0..<5 {
            rfbRequest(fd, incremental: true, width: width, height: height)
            usleep(1_500_000)
            let t0 = now()
            draw(.tile, 1000 + n)
            try update()
            worst = max(worst, now() - t0)
        }
        return worst
    }

    /// REGION_WRITE (2 bytes, DISPI BANK) round trips: p50 and p99 of 5000.
    func writeLatency() throws -> (p50: UInt64, p99: UInt64) {
        var v: UInt16 = 0
        var samples: [UInt64] = []
        samples.reserveCapacity(5000)
        for _ in 0..<5000 {
            v &+= 1
            let t0 = now()
            let bank = DispiRegisters.Write(DispiRegisters.Index.bank, v)
            try client.write16(region: UInt32(MBochs.mmioRegion), offset: bank.offset, bank.value)
            samples.append(now() - t0)
        }
        samples.sort()
        return (samples[2500], samples[4950])
    }
}

/// A TCP connection to 127.0.0.1:`port`.
func tcpConnect(_ port: Int, receiveBuffer: Int32? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = in_port_t(UInt16(port).bigEndian)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { close(fd); throw CommandFailure("cannot connect to port \(port)") }
    return fd
}

func waitForPort(_ port: Int) throws {
    for _ in 0..<300 {
        if let fd = try? tcpConnect(port) { close(fd); return }
        usleep(20_000)
    }
    throw CommandFailure("nothing listens on port \(port)")
}

func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: a.sin_port))
}

/// Reads exactly `n` bytes.
func readFully(_ fd: Int32, _ n: Int) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: n)
    var got = 0
    while got < n {
        let r = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, n - got) }
        guard r > 0 else { throw CommandFailure("connection closed") }
        got += r
    }
    return out
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

/// The RFB 3.8 handshake with no authentication; returns the screen size.
func rfbHandshake(_ fd: Int32) throws -> (Int, Int) {
    _ = try readFully(fd, 12)
    writeAll(fd, Array("RFB 003.008\n".utf8))
    let count = Int(try readFully(fd, 1)[0])
    _ = try readFully(fd, count)
    writeAll(fd, [1])                                   // security type None
    _ = try readFully(fd, 4)                            // SecurityResult
    writeAll(fd, [1])                                   // ClientInit: shared
    let initMessage = try readFully(fd, 24)
    let nameLength = Int(initMessage[20]) << 24 | Int(initMessage[21]) << 16 | Int(initMessage[22]) << 8 | Int(initMessage[23])
    _ = try readFully(fd, nameLength)
    // SetEncodings: raw, DesktopSize.
    writeAll(fd, [2, 0, 0, 2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21])
    return (Int(initMessage[0]) << 8 | Int(initMessage[1]), Int(initMessage[2]) << 8 | Int(initMessage[3]))
}

func rfbRequest(_ fd: Int32, incremental: Bool, width: Int, height: Int) {
    writeAll(fd, [3, incremental ? 1 : 0, 0, 0, 0, 0, UInt8(width >> 8), UInt8(width & 0xff), UInt8(height >> 8), UInt8(height & 0xff)])
}

/// Counts FramebufferUpdates (and their bytes) a keeping-up RFB client gets.
struct VNCCounter {
    let port: Int
    func count(seconds: Double) throws -> (frames: Double, bytes: Double) {
        let fd = try tcpConnect(port)
        defer { close(fd) }
        var (width, height) = try rfbHandshake(fd)
        rfbRequest(fd, incremental: false, width: width, height: height)
        var frames = 0, bytes = 0
        let start = now()
        while Double(now() - start) < seconds * 1e9 {
            let type = try readFully(fd, 1)[0]
            guard type == 0 else { throw CommandFailure("unexpected RFB message \(type)") }
            let header = try readFully(fd, 3)
            let rects = Int(header[1]) << 8 | Int(header[2])
            bytes += 4
            for _ in 0..<rects {
                let r = try readFully(fd, 12)
                let w = Int(r[4]) << 8 | Int(r[5]), h = Int(r[6]) << 8 | Int(r[7])
                let encoding = Int32(bitPattern: UInt32(r[8]) << 24 | UInt32(r[9]) << 16 | UInt32(r[10]) << 8 | UInt32(r[11]))
                bytes += 12
                if encoding == 0 {
                    _ = try readFully(fd, w * h * 4)
                    bytes += w * h * 4
                } else if encoding == -223 {
                    width = w; height = h
                }
            }
            frames += 1
            rfbRequest(fd, incremental: true, width: width, height: height)
        }
        let elapsed = Double(now() - start) / 1e9
        return (Double(frames) / elapsed, Double(bytes) / elapsed)
    }
}

/// The WebSocket upgrade for /ws; throws unless the server switches protocols.
func webSocketUpgrade(_ fd: Int32) throws {
    let request = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    writeAll(fd, Array(request.utf8))
    var head: [UInt8] = []
    while !head.suffix(4).elementsEqual([13, 10, 13, 10]) { head += try readFully(fd, 1) }
    guard String(decoding: head, as: UTF8.self).hasPrefix("HTTP/1.1 101") else { throw CommandFailure("no WebSocket upgrade") }
}

/// Counts the tile messages (and bytes) a keeping-up browser would get.
struct WebCounter {
    let port: Int
    func count(seconds: Double) throws -> (frames: Double, bytes: Double) {
        let fd = try tcpConnect(port)
        defer { close(fd) }
        try webSocketUpgrade(fd)
        var frames = 0, bytes = 0
        var start: UInt64?
        while start.map({ Double(now() - $0) < seconds * 1e9 }) ?? true {
            let h = try readFully(fd, 2)
            var length = Int(h[1] & 0x7f)
            if length == 126 { let e = try readFully(fd, 2); length = Int(e[0]) << 8 | Int(e[1]) }
            if length == 127 { length = try readFully(fd, 8).reduce(0) { $0 << 8 | Int($1) } }
            _ = try readFully(fd, length)
            guard h[0] & 0x0f == 2 else { continue }        // binary: tiles
            if start == nil { start = now(); continue }     // the first is the whole screen a newcomer gets
            frames += 1
            bytes += length
        }
        let elapsed = Double(now() - start!) / 1e9
        return (Double(frames) / elapsed, Double(bytes) / elapsed)
    }
}

/// A client that connects, asks for frames, and never reads again.
struct StalledClient {
    let fd: Int32
    /// Bytes waiting in its receive queue when looked at.
    var queued: Int {
        var n: Int32 = 0
        _ = ioctl(fd, UInt(FIONREAD), &n)
        return Int(n)
    }

    static func vnc(port: Int) throws -> StalledClient {
        let fd = try tcpConnect(port, receiveBuffer: 4096)
        let (w, h) = try rfbHandshake(fd)
        for i in 0..<64 { rfbRequest(fd, incremental: i > 0, width: w, height: h) }
        return StalledClient(fd: fd)
    }

    static func webSocket(port: Int) throws -> StalledClient {
        let fd = try tcpConnect(port, receiveBuffer: 4096)
        try webSocketUpgrade(fd)
        return StalledClient(fd: fd)
    }
}

/// The umdev whose servers and viewers the benchmarks measure: $UMDEV, or
/// the umdev beside this executable (both are built into the same directory).
let umdevExecutable: String = {
    if let p = getenv("UMDEV"), p.pointee != 0 { return String(cString: p) }
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, Int(PATH_MAX))
    let me = n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "umdev-bench"
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/umdev"
}()

/// A program in a child process: `umdev ARGS` by default.
final class ChildProcess {
    let pid: pid_t
    /// `environment` adds to this process's; `stderrPath`, when given, receives the child's stderr.
    init(_ arguments: [String], executable: String = umdevExecutable, environment: [String: String] = [:],
         stderrPath: String? = nil) throws {
        let argv = [executable] + arguments
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        // What the child prints (serve's -device line, say) would land among the figures.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        if let stderrPath { posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_APPEND, 0o600) }
        let env = ServiceManager.environment(setting: environment.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        var cEnv = env.map { strdup($0) } + [nil]
        defer { cEnv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, nil, &cArgs, &cEnv)
        guard rc == 0 else { throw CommandFailure("cannot start \(executable) \(arguments.first ?? ""): \(String(cString: strerror(rc)))") }
        pid = child
    }

    /// User + system CPU seconds so far.
    func cpuSeconds() -> Double {
        guard let f = fopen("/proc/\(pid)/stat", "r") else { return 0 }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 1024)
        guard fgets(&line, Int32(line.count), f) != nil else { return 0 }
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // Fields after the command name's closing parenthesis; utime and stime are the 12th and 13th.
        guard let close = text.lastIndex(of: ")") else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func stop() {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}
