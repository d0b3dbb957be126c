import CommandSupport
import Foundation
import Glibc
import Lifecycle
import MBochs
import PCI
import ServiceManager
import Synchronization
import VFIOUserClient
import Viewer

/// `umdev-bench --upgrade` and `--restart`: the blackout a live upgrade,
/// or a planned restart through the service manager's fd store, costs a
/// busy client. A `umdev serve` child (or, with `--daemon`, a `umdev
/// daemon` holding `--mtty-instances` mtty-1 and `--mbochs-instances`
/// mbochs-large, each with a client attached as QEMU would be) serves the
/// devices; one client thread sends 1-byte REGION_READs back to back and
/// records each round trip. The main thread either sends SIGUSR2 and waits
/// for the new process's READY=1, or plays systemd: SIGTERM, wait for the
/// exit, start again with what the fd store keeps, wait for READY=1. A
/// window's blackout is the longest round trip that started in it: the time
/// a request waited because of it. A display device gets a picture (a
/// 1920x1080 mode, drawn) and a viewer that polls its plane every 10 ms and
/// reconnects when the old process's connection ends; its gap is the
/// longest time between two frames it saw across a window. The server's log
/// gives where the time went.
extension Bench {
    func benchUpgrade() throws { try benchHandover(.upgrade) }
    func benchRestart() throws { try benchHandover(.restart) }
    func benchCrash() throws { try benchHandover(.crash) }

    /// How the server is replaced: SIGUSR2, SIGTERM and a start, SIGKILL and a start.
    enum Replacement: String { case upgrade, restart, crash }

    /// The server child, started as a live upgrade or a restart needs it:
    /// this process plays its service manager (`FDStore`), which counts its
    /// READY=1 and, for a restart, keeps what it stores.
    final class Served {
        let mode: Replacement
        var restart: Bool { mode != .upgrade }
        let log: String
        let arguments: [String]
        let store: FDStore
        private(set) var pid: pid_t = 0
        private var readies = 0

        init(_ arguments: [String], mode: Replacement, dir: String) throws {
            self.mode = mode
            log = dir + "/log"
            self.arguments = arguments + (mode != .upgrade ? ["--fd-store"] : [])
            do { store = try FDStore(path: dir + "/notify") } catch { throw CommandFailure("\(error)") }
            try launch()
        }

        func launch() throws {
            do { pid = try store.start(umdevExecutable, arguments, stderr: log) } catch { throw CommandFailure("\(error)") }
        }

        /// Waits for the next READY=1.
        func waitReady(seconds: Double = 60) -> Bool {
            readies += 1
            return store.waitReadies(readies, seconds: seconds)
        }

        /// A live upgrade (SIGUSR2) or a restart (SIGTERM, the exit, a start with the store), up to READY=1.
        /// Returns when the old process was gone (a restart or a crash; for an upgrade, when it was asked).
        @discardableResult
        func cycle() throws -> UInt64 {
            var gone = now()
            if mode == .crash {
                kill(pid, SIGKILL)
                waitpid(pid, nil, 0)
                gone = now()
                try launch()
            } else if restart {
                kill(pid, SIGTERM)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
                guard status == 0 else { throw CommandFailure("umdev exited with status \(status) on SIGTERM") }
                gone = now()
                try launch()
            } else {
                kill(pid, SIGUSR2)
            }
            guard waitReady() else { throw CommandFailure("the \(restart ? "restarted" : "upgraded") umdev did not say READY=1") }
            return gone
        }

        func stop() {
            store.flush()
            kill(pid, SIGTERM)
            waitpid(pid, nil, 0)
        }
    }

    func benchHandover(_ mode: Replacement) throws {
        let restart = mode != .upgrade
        let dir = "/tmp/umdev-bench-\(mode.rawValue)-\(getpid())"
        mkdir(dir, 0o700)
        defer { _ = system("rm -rf '\(dir)'") }
        let log = dir + "/log"
        let server: Served
        let busy: String
        var displays: [String] = []
        var held: [VFIOUserClient] = []
        let what: String
        let verb = ["upgrade": "upgraded", "restart": "restarted", "crash": "killed and started again"][mode.rawValue]!
        if daemon {
            let run = dir + "/run"
            server = try Served(["daemon", "--run-dir", run, "--config-dir", dir + "/config",
                                 "--budget", "mtty=\(max(1, mttyInstances))", "--budget", "mbochs=\(max(64, mbochsInstances * 64))",
                                 "--log-level", "info"], mode: mode, dir: dir)
            guard server.waitReady(seconds: 30) else { server.stop(); throw CommandFailure("umdev daemon did not say READY=1") }
            var sockets: [(type: String, socket: String, display: String?)] = []
            for (type, count) in [("mtty-1", mttyInstances), ("mbochs-large", mbochsInstances)] {
                for _ in 0..<count {
                    var request = ControlRequest("start")
                    request.type = type
                    let answer = try ControlWire.call(request, path: run + "/control.sock")
                    guard answer.ok, let i = answer.instance else {
                        server.stop()
                        throw CommandFailure("starting \(type): \(answer.error?.message ?? "refused")")
                    }
                    sockets.append((type, i.socket, i.displaySocket))
                }
            }
            guard let first = sockets.first else { server.stop(); throw CommandFailure("--daemon needs at least one instance") }
            busy = first.socket
            for s in sockets.dropFirst() {
                let c = try VFIOUserClient(path: s.socket)
                try c.negotiate(json: s.display == nil ? VFIOUserClient.qemuCapabilitiesJSON : VFIOUserClient.planeCapabilitiesJSON)
                if s.display != nil { try drawPicture(c) }
                held.append(c)
            }
            displays = sockets.compactMap(\.display).prefix(1).map { $0 }
            what = "`umdev daemon` with \(mttyInstances) mtty-1 and \(mbochsInstances) mbochs-large, each attached, \(verb)"
        } else {
            let path = dir + "/device.sock"
            server = try Served(["serve", "--type", type, "--socket", path, "--log-level", "info"], mode: mode, dir: dir)
            guard server.waitReady(seconds: 30) else { server.stop(); throw CommandFailure("umdev serve did not say READY=1") }
            busy = path
            if access(path + ".display", F_OK) == 0 { displays = [path + ".display"] }
            what = "`umdev serve --type \(type)` \(verb)"
        }
        defer { server.stop() }
        let client = try VFIOUserClient(path: busy)
        try client.negotiate(json: displays.isEmpty || daemon ? VFIOUserClient.qemuCapabilitiesJSON : VFIOUserClient.planeCapabilitiesJSON)
        if !daemon && !displays.isEmpty { try drawPicture(client) }
        let viewer = displays.first.map { PlaneViewer(socket: $0) }
        viewer?.start()
        defer { viewer?.stop() }
        if let viewer, !viewer.waitForFrames(5, seconds: 10) { throw CommandFailure("the viewer saw no picture on \(displays[0])") }

        // A crash loses the request in flight if the old process had read it: the client gives up after 5 s, as QEMU does.
        if mode == .crash { client.replyTimeout = 5_000 }
        let streamer = Streamer(client: client, region: daemon ? 0 : region, offset: daemon ? 7 : offset, tolerateTimeouts: mode == .crash)
        var windows: [(from: UInt64, to: UInt64)] = []
        var gone: [UInt64] = []
        let how = ["upgrade": "SIGUSR2", "restart": "SIGTERM and a start with the fd store", "crash": "SIGKILL and a start with the fd store"][mode.rawValue]!
        print("\(mode.rawValue): \(what) \(upgrades) times by \(how)"
              + " while one client sends 1-byte REGION_READs back to back" + (viewer == nil ? "" : "; a viewer polls \(displays[0]) every 10 ms"))
        for _ in 0..<upgrades {
            try streamer.waitFor(200)
            let t0 = now()
            gone.append(try server.cycle())
            windows.append((t0, now()))
            try streamer.check()
        }
        // Let the requests in flight at the last READY=1 finish, and the viewer come back.
        try streamer.waitFor(200)
        if let viewer, !viewer.waitForFrames(5, seconds: 10) { throw CommandFailure("the viewer did not come back after the last upgrade") }
        try streamer.stop()
        for (i, h) in held.enumerated() {
            do { _ = try h.deviceInfo() } catch { throw CommandFailure("idle client \(i) lost its device: \(error)") }
        }
        if mode == .crash {
            streamer.reportCrash(windows: windows, gone: gone)
        } else {
            streamer.report(windows: windows, signal: restart ? "SIGTERM to READY=1" : "SIGUSR2 to READY=1",
                            note: restart ? "(the exit, the start, the restore)" : "(includes the check, served meanwhile)")
        }
        if let viewer {
            let gaps = viewer.gaps(in: windows).sorted()
            print("viewer gap (ms)        p50 \(ms(pct(gaps, 0.5)))  p99 \(ms(pct(gaps, 0.99)))  max \(ms(gaps.last ?? 0))"
                  + "  (longest time between two frames; \(viewer.reconnects) reconnects, picture checked: \(viewer.mismatches) mismatches)")
        }
        if !held.isEmpty { print("idle clients           \(held.count) attached throughout, each answered after the upgrades") }
        printLogTimings(log)
    }

    /// A guest's picture on an mbochs: a 1920x1080 XRGB mode and the test pattern drawn into VRAM.
    func drawPicture(_ c: VFIOUserClient) throws {
        let info = try c.regionInfo(UInt32(MBochs.vramRegion))
        guard info.mappable, info.fd >= 0 else { throw CommandFailure("VRAM is not mappable") }
        for r in DispiRegisters.modeSet(width: 1920, height: 1080, vramSize: info.size) {
            try c.write16(region: UInt32(MBochs.mmioRegion), offset: r.offset, r.value)
        }
        guard let p = mmap(nil, Int(info.size), PROT_READ | PROT_WRITE, MAP_SHARED, info.fd, off_t(info.offset)), p != MAP_FAILED else {
            throw CommandFailure("mmap of VRAM: \(String(cString: strerror(errno)))")
        }
        defer { munmap(p, Int(info.size)) }
        TestPattern.drawXRGB(into: p, width: 1920, height: 1080, stride: 1920 * 4, seed: 11)
    }
}

/// A viewer of one display socket, as `umdev view` is: polls the plane
/// every 10 ms, checks a pixel of the picture, and reconnects at once when
/// its connection ends. Records when it saw each frame.
final class PlaneViewer: @unchecked Sendable {
    // @unchecked: `frames`, `reconnects` and `mismatches` are written by the
    // viewer's thread and read after `stop` (or under `lock`).
    let socket: String
    private let lock = Mutex<[UInt64]>([])
    private let stopping = Atomic<Bool>(false)
    private var thread: Thread?
    private(set) var reconnects = 0
    private(set) var mismatches = 0

    init(socket: String) { self.socket = socket }

    func start() {
        let t = Thread { [self] in run() }
        thread = t
        t.start()
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        while let t = thread, !t.isFinished { usleep(1000) }
    }

    private func run() {
        var first = true
        while !stopping.load(ordering: .relaxed) {
            do {
                let c = try VFIOUserClient(path: socket)
                try c.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
                let mapping = try PlaneMapping(client: c)
                if !first { reconnects += 1 }
                first = false
                while !stopping.load(ordering: .relaxed) {
                    if let f = try mapping.refresh() {
                        let x = 777, y = 555
                        let pixel = f.pixels.load(fromByteOffset: y * f.stride + x * 4, as: UInt32.self) & 0xff_ffff
                        if pixel != TestPattern.rgb(x: x, y: y, width: f.width, height: f.height, seed: 11) { mismatches += 1 }
                        let t = now()
                        lock.withLock { $0.append(t) }
                    }
                    usleep(10_000)
                }
            } catch {
                usleep(1_000)
            }
        }
    }

    /// Whether `n` more frames arrive within `seconds`.
    func waitForFrames(_ n: Int, seconds: Double) -> Bool {
        let target = lock.withLock { $0.count } + n
        let deadline = now() + UInt64(seconds * 1e9)
        while now() < deadline {
            if lock.withLock({ $0.count }) >= target { return true }
            usleep(5_000)
        }
        return false
    }

    /// For each window, the longest time between two frames around it.
    func gaps(in windows: [(from: UInt64, to: UInt64)]) -> [UInt64] {
        let frames = lock.withLock { $0 }
        return windows.map { w in
            var worst: UInt64 = 0
            var previous: UInt64?
            for t in frames {
                if let p = previous, t >= w.from, p <= w.to { worst = max(worst, t - p) }
                previous = t
                if t > w.to && previous != nil && worst > 0 { break }
            }
            return worst
        }
    }
}

func ms(_ ns: UInt64) -> String { format2(Double(ns) / 1e6) }
func pct(_ v: [UInt64], _ p: Double) -> UInt64 { v.isEmpty ? 0 : v[min(v.count - 1, Int(Double(v.count) * p))] }

/// One client thread sending 1-byte REGION_READs back to back, each round
/// trip recorded as (start, duration) in preallocated memory (it allocates
/// nothing); a window's blackout is the longest round trip that started in it.
final class Streamer: @unchecked Sendable {
    // @unchecked: the arrays are written by the thread only, read after `stop`; the rest is atomic or locked.
    static let capacity = 4_000_000
    private let starts = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
    private let durations = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
    private let count = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let failed = Mutex<String?>(nil)
    /// When each request that got no reply (`tolerateTimeouts`) was sent.
    private let lost = Mutex<[UInt64]>([])
    private var thread: Thread?

    init(client: VFIOUserClient, region: UInt32, offset: UInt64, tolerateTimeouts: Bool = false) {
        nonisolated(unsafe) let c = client
        let t = Thread { [self] in
            var buffer: UInt8 = 0
            var n = 0
            while !stopping.load(ordering: .relaxed) && n < Self.capacity {
                let t0 = now()
                do {
                    try withUnsafeMutableBytes(of: &buffer) { try c.read(region: region, offset: offset, into: $0) }
                } catch ClientError.system(ETIMEDOUT, _) where tolerateTimeouts {
                    lost.withLock { $0.append(t0) }
                    continue
                } catch {
                    failed.withLock { $0 = "\(error)" }
                    return
                }
                starts[n] = t0
                durations[n] = now() - t0
                n += 1
                count.store(n, ordering: .releasing)
            }
        }
        thread = t
        t.start()
    }

    deinit { starts.deallocate(); durations.deallocate() }

    /// Throws if a request failed.
    func check() throws {
        if let why = failed.withLock({ $0 }) { throw CommandFailure("a request failed: \(why)") }
    }

    /// Waits for `n` more answers (steady traffic), or a failure.
    func waitFor(_ n: Int) throws {
        let before = count.load(ordering: .acquiring)
        while count.load(ordering: .acquiring) < before + n, failed.withLock({ $0 == nil }) { usleep(200) }
        try check()
    }

    func stop() throws {
        stopping.store(true, ordering: .relaxed)
        while let t = thread, !t.isFinished { usleep(1000) }
        try check()
    }

    /// For a crash: the time from each kill to the first reply the client got
    /// from the process started after it (kills whose request in flight was lost counted apart: that
    /// client waited out its timeout), and the kills' own lengths.
    func reportCrash(windows: [(from: UInt64, to: UInt64)], gone: [UInt64]) {
        let total = count.load(ordering: .acquiring)
        let lostAt = lost.withLock { $0 }
        var served: [UInt64] = []
        var lostKills = 0
        var k = 0
        for (i, w) in windows.enumerated() {
            let next = i + 1 < windows.count ? windows[i + 1].from : UInt64.max
            if lostAt.contains(where: { $0 <= w.to && $0 + 1_000_000_000 >= w.from && $0 < next }) { lostKills += 1; continue }
            // The first reply after the killed process was gone: the new one's.
            while k < total && starts[k] + durations[k] <= gone[i] { k += 1 }
            if k < total { served.append(starts[k] + durations[k] - w.from) }
        }
        served.sort()
        let lengths = windows.map { $0.to - $0.from }.sorted()
        print("requests answered      \(total); without a reply: \(lostAt.count) (in flight when the process died, each waited out the client's 5 s)")
        print("kill to served (ms)    p50 \(ms(pct(served, 0.5)))  p99 \(ms(pct(served, 0.99)))  max \(ms(served.last ?? 0))"
              + "  (\(served.count) kills; the \(lostKills) that cost the request in flight are left out)")
        print("SIGKILL to READY=1     p50 \(ms(pct(lengths, 0.5)))  p99 \(ms(pct(lengths, 0.99)))  (the start, the restore)")
    }

    /// Prints requests answered, the steady round trip, each window's blackout and the windows' own lengths.
    func report(windows: [(from: UInt64, to: UInt64)], signal: String, note: String) {
        let total = count.load(ordering: .acquiring)
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
        let lengths = windows.map { $0.to - $0.from }.sorted()
        print("requests answered      \(total), none lost or failed")
        print("steady round trip      p50 \(format2(Double(pct(steady, 0.5)) / 1e3)) µs")
        print("blackout (ms)          p50 \(ms(pct(blackouts, 0.5)))  p99 \(ms(pct(blackouts, 0.99)))  max \(ms(blackouts.last ?? 0))")
        print("\(signal.padding(toLength: 22, withPad: " ", startingAt: 0)) p50 \(ms(pct(lengths, 0.5)))  p99 \(ms(pct(lengths, 0.99)))  \(note)")
    }
}

/// Where the time went, from the server's own log lines (key=value metadata).
func printLogTimings(_ log: String) {
    let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    let what: [(String, String)] = [
        ("check_ms", "check (new binary reads a handover, old serves)"),
        ("pause_ms", "stop between requests, write the handover"),
        ("store_ms", "stop between requests, hand to the fd store"),
        ("bytes", "handover size (bytes)"),
        ("descriptors", "descriptors handed over"),
        ("startup_ms", "exec, dynamic loading, runtime start"),
        ("restore_ms", "restore (parse, rebuild, re-map)"),
        ("total_ms", "handover written to serving again"),
    ]
    for (key, label) in what {
        var values: [Double] = []
        for line in text.split(separator: "\n") {
            guard let r = line.range(of: " " + key + "=") else { continue }
            let rest = line[r.upperBound...].prefix { $0.isNumber || $0 == "." }
            if let v = Double(rest) { values.append(v) }
        }
        values.sort()
        guard !values.isEmpty else { continue }
        let timed = key.hasSuffix("_ms")
        func shown(_ v: Double) -> String { timed ? format2(v) + " ms" : "\(Int(v))" }
        print("  \(label.padding(toLength: 48, withPad: " ", startingAt: 0)) p50 \(shown(values[values.count / 2]))  max \(shown(values.last!))")
    }
}
