import ArgumentParser
import Glibc
import Lifecycle
import Logging
import MTTY
import PCI
import VFIOUserServer

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve one device on a vfio-user socket.",
        discussion: """
        Types: \(Catalog.all.map(\.id).joined(separator: ", ")) (see `umdev types`).
        mtty-1 and mtty-2 are the Linux mtty sample; "test" and "test-nommap" are
        protocol test devices for exercising the server, not sample devices.
        One client at a time is served; when it disconnects the device keeps
        its state and the next client may connect. A display type (mdpy-*,
        mbochs-*) also listens on a display socket, SOCKET.display unless
        --display-socket says otherwise: any number of viewers (umdev view) attach
        there while a VMM holds the device socket. Stop with SIGINT or SIGTERM.
        For many devices, budgets, UUIDs and definitions, run `umdev daemon`.
        """)

    @Option(name: .long, help: "Device type to serve.")
    var type: String = "mtty-2"

    @Option(name: .long, help: "UNIX socket path to listen on.")
    var socket: String

    @Option(name: .long, help: ArgumentHelp(
        "Serial backend of the next mtty port: loopback (as the sample), pty, or unix:PATH. Repeat per port.",
        valueName: "backend"))
    var serial: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "Display socket for viewers (display types only); default SOCKET.display.", valueName: "path"))
    var displaySocket: String?

    @Flag(name: .long, help: "Do not open a display socket.")
    var noDisplaySocket = false

    @Option(name: .customLong("poll-us"), help: ArgumentHelp(
        "Spin on the connection for up to N µs for the next request before blocking: lower latency for a busy core (default 0, off).",
        valueName: "N"))
    var pollMicroseconds: Int = 0

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.bootstrap()
        let logger = Logger(label: "umdev")
        guard let kind = Catalog.type(type) else {
            throw ValidationError("unknown device type '\(type)'; known: \(Catalog.all.map(\.id).joined(separator: ", "))")
        }
        guard serial.isEmpty || kind.pool == .mtty else { throw ValidationError("--serial applies to mtty types only") }
        guard serial.count <= kind.cost else { throw ValidationError("\(kind.id) has \(kind.cost) port(s); \(serial.count) --serial given") }
        for s in serial where SerialBackend(argument: s) == nil {
            throw ValidationError("bad --serial '\(s)': use loopback, pty or unix:PATH")
        }
        let device = try kind.make(Attributes(serial.enumerated().map { ("port\($0.offset)", $0.element) }))
        if let mtty = device as? MTTY {
            for (port, name) in mtty.backendNames.enumerated() {
                logger.notice("port \(port): \(name ?? "loopback (what the guest sends comes back)")")
            }
        }
        guard displaySocket == nil || !noDisplaySocket else { throw ValidationError("--display-socket and --no-display-socket conflict") }
        guard displaySocket == nil || device is DisplayDevice else { throw ValidationError("\(kind.id) has no display; --display-socket applies to display types") }
        let host = DeviceHost(device: device, typeName: kind.id)
        guard (0...1_000_000).contains(pollMicroseconds) else { throw ValidationError("--poll-us is 0 to 1000000") }
        let server = try DeviceServer(host: host, path: socket, logger: logger, pollMicroseconds: pollMicroseconds)
        var paths = [socket]
        signal(SIGPIPE, SIG_IGN)
        if let display = device as? DisplayDevice {
            PlaneLog(display.planes, logger: logger).start()
            if !noDisplaySocket {
                let path = displaySocket ?? socket + ".display"
                let viewers = try DisplayServer(description: host.description, path: path, logger: logger)
                viewers.start()
                paths.append(path)
                logger.notice("display socket for viewers on \(path)")
            }
        }
        installTerminationHandler(paths: paths)
        logger.notice("serving \(kind.id) on \(socket)")
        server.serve()
    }
}

/// Removes the socket files and exits on SIGINT/SIGTERM.
private nonisolated(unsafe) var socketPathsForSignal: (UnsafeMutablePointer<CChar>?, UnsafeMutablePointer<CChar>?)

func installTerminationHandler(paths: [String]) {
    socketPathsForSignal = (paths.first.map { strdup($0) }, paths.dropFirst().first.map { strdup($0) })
    let handler: @convention(c) (Int32) -> Void = { _ in
        if let p = socketPathsForSignal.0 { unlink(p) }
        if let p = socketPathsForSignal.1 { unlink(p) }
        _exit(0)
    }
    signal(SIGINT, handler)
    signal(SIGTERM, handler)
}
