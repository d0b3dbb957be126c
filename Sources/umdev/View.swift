import ArgumentParser
import CommandSupport
import Foundation
import Glibc
import Logging
import PCI
import ServiceManager
import VFIOUser
import VFIOUserClient
import Viewer

struct View: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "view",
        abstract: "Look at display devices' screens: a PNG snapshot, a VNC server, or a live web page.",
        discussion: """
        Connects to display sockets (umdev serve makes one beside each display device's
        socket: SOCKET.display), or to device sockets no VMM holds, and reads each
        device's primary plane through shared memory: mdpy's framebuffer region, or
        mbochs's current buffer in VRAM. Nothing it does can change the device or slow
        it down. Three outputs:

          --png FILE   one device: writes the plane as an 8-bit RGB PNG and exits. A
                       disabled plane (the guest shows nothing) is an error, exit status
                       1. --wait-change first waits until the picture or the plane
                       changes and then holds still for 90 ms, up to --timeout seconds;
                       it says READY=1 on $NOTIFY_SOCKET (sd_notify) once it has taken
                       the picture it compares with, so whoever changes the screen
                       knows the change will be seen.

          --vnc HOST:PORT
                       one device: a VNC server (RFB, on libvncserver) showing the
                       screen live to any number of VNC clients, which follow mode
                       changes if they support DesktopSize. Listens on 127.0.0.1
                       unless told otherwise; an address other than loopback needs
                       --vnc-password-file (VNC authentication). A disabled plane is a
                       black screen.

          --http HOST:PORT
                       any number of devices (repeat --socket): a web page showing each
                       screen live, side by side, with its plane's facts and frame
                       rate. Open http://HOST:PORT/ in a browser. --http-tiles chooses
                       how changed tiles travel: raw RGB (default: cheapest on a local
                       network) or PNG (fewer bytes, more CPU).

        --vnc and --http can run together. Live outputs look every --interval ms
        (30, as QEMU's display refresh) while the picture changes, and every
        --idle-interval ms (250) once it has not changed for a second, so an idle
        screen costs little; they send only the 64x64 tiles that changed, and a
        client that cannot keep up skips frames without delaying the others.
        Stop them with SIGINT or SIGTERM.
        """)

    @Option(name: .customLong("socket"), help: "Display socket (or device socket) of a device; repeat for --http.")
    var sockets: [String]
    @Option(help: "Write the screen to this PNG file.") var png: String?
    @Flag(help: "With --png: wait until the picture or the plane changes first.") var waitChange = false
    @Option(help: "With --wait-change: seconds to wait at most.") var timeout: Double = 10
    @Option(help: "Serve the screen over VNC on HOST:PORT (e.g. 127.0.0.1:5901).") var vnc: String?
    @Option(help: "File whose first line is the VNC password.") var vncPasswordFile: String?
    @Option(help: "Serve a live web page on HOST:PORT (e.g. 127.0.0.1:8080).") var http: String?
    @Option(help: "How the page's tiles travel: raw or png.") var httpTiles: String = "raw"
    @Option(help: "Milliseconds between looks at the planes while the picture changes.") var interval: Int = 30
    @Option(help: "Milliseconds between looks once the picture has not changed for a second (the first change after that shows within it; give --interval's value to look at one rate always).")
    var idleInterval: Int = 250
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard !sockets.isEmpty else { throw ValidationError("give at least one --socket") }
        let outputs = [png != nil, vnc != nil || http != nil].filter { $0 }.count
        guard outputs == 1 else { throw ValidationError("choose --png, or --vnc and/or --http") }
        if png != nil || (vnc != nil && http == nil) {
            guard sockets.count == 1 else { throw ValidationError("--png and --vnc show one device: give one --socket") }
        }
        guard (10...10_000).contains(interval) else { throw ValidationError("--interval must be 10 to 10000 ms") }
        guard (interval...10_000).contains(idleInterval) else { throw ValidationError("--idle-interval must be --interval's value (\(interval)) to 10000 ms") }
        guard WebOutput.TileEncoding(rawValue: httpTiles) != nil else { throw ValidationError("--http-tiles must be raw or png") }
    }

    func run() throws {
        if let png { return try snapshot(to: png) }
        logging.bootstrap()
        try live()
    }

    // MARK: --png

    private func snapshot(to path: String) throws {
        let socket = sockets[0]
        let client = try connectViewer(socket)
        guard try client.probePlaneKind() != nil else { throw CommandFailure("the device at \(socket) has no display") }
        let mapping = try PlaneMapping(client: client)
        var frame = try mapping.refresh()
        if waitChange { frame = try waitForChange(mapping, from: frame) }
        guard let frame else {
            printError("umdev view: the plane is disabled: the guest shows nothing")
            throw ExitCode(1)
        }
        guard let image = PixelFormat.rgb(frame) else {
            throw CommandFailure("plane format \(fourccName(frame.fourcc)) cannot be converted")
        }
        try PNG.write(image, to: path)
        print("\(path): \(fourccName(frame.fourcc)) \(frame.width)x\(frame.height) stride \(frame.stride), "
              + (frame.kind == .dmabuf ? "dmabuf id \(frame.id)" : "region \(frame.id)"))
    }

    /// Polls every 30 ms (QEMU's display refresh) until the plane's id or
    /// layout differs from `first`, or its pixels do; then until the picture
    /// holds still for 90 ms (three polls), so a guest caught mid-drawing is
    /// not what gets saved.
    private func waitForChange(_ mapping: PlaneMapping, from first: PlaneMapping.Frame?) throws -> PlaneMapping.Frame? {
        let deadline = monotonicSeconds() + timeout
        var reference = first
        var snapshot = Self.copy(first)
        // Any change from here on is seen: a script (or a test) waiting to draw may go.
        ServiceManager.notify("READY=1\nSTATUS=waiting up to \(timeout) s for the picture to change")
        var changed = false
        var stillPolls = 0
        while monotonicSeconds() < deadline {
            usleep(30_000)
            let now = try mapping.refresh()
            let same = !Self.differ(reference, now) && (now.map { snapshot.isEmpty || memcmp(snapshot, $0.pixels, snapshot.count) == 0 } ?? true)
            stillPolls = same ? stillPolls + 1 : 0
            if changed && stillPolls == 3 { return now }
            if !same {
                changed = true
                reference = now
                snapshot = Self.copy(now)
            }
        }
        printError("umdev view: \(changed ? "the picture did not settle" : "nothing changed") within \(timeout) seconds")
        throw ExitCode(1)
    }

    static func copy(_ frame: PlaneMapping.Frame?) -> [UInt8] {
        frame.map { Array(UnsafeRawBufferPointer(start: $0.pixels, count: $0.byteCount)) } ?? []
    }

    /// Whether two looks at the plane show different layouts (or one shows none).
    static func differ(_ a: PlaneMapping.Frame?, _ b: PlaneMapping.Frame?) -> Bool {
        guard let a, let b else { return (a == nil) != (b == nil) }
        return a.id != b.id || a.width != b.width || a.height != b.height || a.stride != b.stride || a.fourcc != b.fourcc
    }

    // MARK: --vnc, --http

    private func live() throws {
        // Only the main thread takes SIGINT/SIGTERM (sigwait below); threads started from here inherit the mask.
        let termination = blockTerminationSignals()
        let logger = Logger(label: "umdev-view")
        var vncOutput: VNCOutput?
        if let vnc {
            guard VNCOutput.isAvailable else { throw CommandFailure(VNCOutput.unavailableReason) }
            let (host, port) = try Self.address(vnc, "--vnc")
            var password: String?
            if let file = vncPasswordFile {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8),
                      let line = text.split(separator: "\n").first, !line.isEmpty else {
                    throw CommandFailure("cannot read a password from \(file)")
                }
                password = String(line)
            } else if !host.hasPrefix("127.") {
                throw CommandFailure("--vnc on \(host) would let anyone on the network watch: give --vnc-password-file, or listen on 127.0.0.1")
            }
            do {
                vncOutput = try VNCOutput(host: host, port: port, password: password, name: "umdev \(sockets[0])",
                                          verbose: logging.logLevel <= .debug)
            } catch { throw CommandFailure("VNC: \(error)") }
            logger.notice("VNC server on \(host):\(port)\(password == nil ? "" : " (password required)")")
        }
        var webOutput: WebOutput?
        if let http {
            let (host, port) = try Self.address(http, "--http")
            let encoding = WebOutput.TileEncoding(rawValue: httpTiles)!
            do {
                webOutput = try WebOutput(host: host, port: port, devices: sockets, encoding: encoding, logger: logger)
            } catch { throw CommandFailure("\(error)") }
            logger.notice("web page on http://\(host):\(webOutput!.port)/ (\(encoding.rawValue) tiles)")
        }
        let outputs = LiveOutputs(vnc: vncOutput, web: webOutput)
        for (i, socket) in sockets.enumerated() {
            let watcher = DeviceWatch(index: i, socket: socket, outputs: outputs, interval: interval, idleInterval: idleInterval, logger: logger)
            Thread.detachNewThread { watcher.run() }
        }
        var signal: Int32 = 0
        var set = termination
        sigwait(&set, &signal)
        logger.notice("stopping")
        webOutput?.stop()
    }

    static func address(_ text: String, _ option: String) throws -> (String, Int) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, let port = Int(parts[1]), (0...65535).contains(port) else {
            throw ValidationError("\(option) takes HOST:PORT, e.g. 127.0.0.1:5901")
        }
        return (String(parts[0]), port)
    }
}

/// The live outputs, shared by the devices' watcher threads.
final class LiveOutputs: @unchecked Sendable {
    // @unchecked: VNC is used by device 0's thread only; WebOutput is thread-safe.
    let vnc: VNCOutput?
    let web: WebOutput?
    init(vnc: VNCOutput?, web: WebOutput?) { self.vnc = vnc; self.web = web }
}

/// One device, looked at every `interval` ms on a thread of its own (every
/// `idleInterval` ms once its picture has not changed for a second); it
/// reconnects when the device's socket goes away and comes back.
final class DeviceWatch: @unchecked Sendable {
    // @unchecked: handed to its thread at start and used only there.
    let index: Int
    let socket: String
    let outputs: LiveOutputs
    let interval: Int
    let idleInterval: Int
    let logger: Logger

    init(index: Int, socket: String, outputs: LiveOutputs, interval: Int, idleInterval: Int, logger: Logger) {
        self.index = index; self.socket = socket; self.outputs = outputs; self.interval = interval; self.idleInterval = idleInterval
        self.logger = logger
    }

    /// How long the picture stays the same before the looks slow to `idleInterval`.
    static let idleAfter: UInt64 = 1_000_000_000

    /// How long a lost display socket is retried at once, the picture kept:
    /// a live upgrade of the server ends every viewer's connection and the
    /// same listener takes them back within milliseconds.
    static let quickRetrySeconds = 3.0

    func run() {
        var complained = false
        // The watcher whose pixels the outputs may still show: kept (mapped)
        // until its successor's first picture replaces them.
        var shown: ScreenWatcher?
        var lostAt: UInt64?
        while true {
            do {
                let client = try connectViewer(socket)
                let watcher = ScreenWatcher(mapping: try PlaneMapping(client: client))
                logger.info(lostAt == nil ? "watching \(socket)" : "watching \(socket) again")
                complained = false
                lostAt = nil
                try watch(watcher, replacing: &shown)
            } catch {
                let now = monotonicNanoseconds()
                let since = lostAt ?? now
                lostAt = since
                if Double(now - since) / 1e9 < Self.quickRetrySeconds {
                    usleep(2_000)
                    continue
                }
                if !complained { logger.warning("\(socket): \(error); retrying every second") }
                complained = true
                deliver(.nothing)
                sleep(1)
            }
        }
    }

    private func watch(_ watcher: ScreenWatcher, replacing shown: inout ScreenWatcher?) throws {
        var wasShowing: Bool?
        let busy = UInt64(interval) * 1_000_000, idle = UInt64(idleInterval) * 1_000_000
        var next = monotonicNanoseconds()
        var lastChange = next
        while true {
            let update = try watcher.poll()
            let looked = monotonicNanoseconds()
            if update.layoutChanged || update.moved || !update.changed.isEmpty { lastChange = looked }
            let period = looked - lastChange >= Self.idleAfter ? idle : busy
            let showing = update.frame != nil
            if showing != wasShowing {
                if let f = update.frame {
                    logger.info("\(socket): \(fourccName(f.fourcc)) \(f.width)x\(f.height) stride \(f.stride)")
                } else {
                    logger.info("\(socket): the plane is disabled; showing a blank screen")
                }
                wasShowing = showing
            }
            deliver(update)
            if shown !== watcher { shown = watcher }
            next += period
            let t = monotonicNanoseconds()
            if next > t { usleep(UInt32((next - t) / 1000)) } else { next = t }   // behind: skip, do not catch up
        }
    }

    private func deliver(_ update: ScreenWatcher.Update) {
        if index == 0 { outputs.vnc?.show(update) }
        outputs.web?.publish(device: index, update: update)
    }
}

/// Connects as a viewer, offering the display-plane extension.
func connectViewer(_ socket: String) throws -> VFIOUserClient {
    let client: VFIOUserClient
    do {
        client = try VFIOUserClient(path: socket)
        try client.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
    } catch {
        throw CommandFailure("cannot talk to \(socket): \(error)")
    }
    guard client.serverVersionJSON.contains(Capabilities.gfxPlaneKey) else {
        throw CommandFailure("\(socket) does not speak umdev's display-plane extension (x-umdev-gfx-plane)")
    }
    return client
}

/// Blocks SIGINT and SIGTERM in this thread (and threads it starts), for sigwait.
func blockTerminationSignals() -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &set, nil)
    return set
}

func monotonicSeconds() -> Double { Double(monotonicNanoseconds()) / 1e9 }

/// A fourcc's four characters ("XR24").
func fourccName(_ fourcc: UInt32) -> String {
    String(decoding: (0..<4).map { UInt8(truncatingIfNeeded: fourcc >> (8 * UInt32($0))) }, as: UTF8.self)
}
