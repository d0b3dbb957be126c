import ArgumentParser
import Glibc
import VFIOUser
import VFIOUserClient
import Viewer

struct View: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at a display device's screen.",
        discussion: """
        Connects to a display socket (umdev serve makes one beside each display
        device's socket: SOCKET.display), or to a device socket no VMM holds, and
        reads the device's primary plane through shared memory: mdpy's framebuffer
        region, or mbochs's current buffer in VRAM.

          --png FILE   writes the plane as an 8-bit RGB PNG and exits. A disabled
                       plane (the guest shows nothing) is an error, exit status 1.
                       --wait-change first waits until the picture or the plane
                       changes and then holds still for 90 ms, up to --timeout
                       seconds: for scripts that start a guest step and then
                       take the snapshot.
        """)

    @Option(help: "Display socket (or device socket) of the device.") var socket: String
    @Option(help: "Write the screen to this PNG file.") var png: String
    @Flag(help: "Wait until the picture or the plane changes before the snapshot.") var waitChange = false
    @Option(help: "Seconds --wait-change waits at most.") var timeout: Double = 10

    func run() throws {
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
        try PNG.write(image, to: png)
        print("\(png): \(fourccName(frame.fourcc)) \(frame.width)x\(frame.height) stride \(frame.stride), "
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
}

func monotonicSeconds() -> Double { Double(now()) / 1e9 }

/// A fourcc's four characters ("XR24").
func fourccName(_ fourcc: UInt32) -> String {
    String(decoding: (0..<4).map { UInt8(truncatingIfNeeded: fourcc >> (8 * UInt32($0))) }, as: UTF8.self)
}
