import ArgumentParser
import CommandSupport
import Descriptors
import Glibc
import Lifecycle
import Logging
import MTTY
import PCI
import ServiceManager
import SystemPackage
import UnixSocket
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

    @Option(name: [.customLong("socket-path"), .customLong("socket")], help: ArgumentHelp(
        "UNIX socket path to listen on (--socket is the same).", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("fd"), help: ArgumentHelp(
        "Serve on this inherited descriptor: a UNIX stream socket, listening or already connected to the client.",
        valueName: "fdnum"))
    var inheritedFD: Int32?

    @Flag(name: .long, help: "Print the backend's capabilities as JSON (Protocol/BACKEND.md) and exit.")
    var printCapabilities = false

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

    func validate() throws {
        if inheritedFD != nil && socket != nil { throw ValidationError("--fd and --socket-path conflict: give one") }
    }

    func run() throws {
        logging.bootstrap()
        let logger = Logger(label: "umdev")
        guard let kind = Catalog.type(type) else {
            throw ValidationError("unknown device type '\(type)'; known: \(Catalog.all.map(\.id).joined(separator: ", "))")
        }
        if printCapabilities {
            // The conventions: print, exit 0, ignore every other option.
            guard let d = BackendDescription(type: kind, binary: CommandLine.arguments[0]) else {
                throw CommandFailure("cannot build a \(kind.id) to describe it")
            }
            print(BackendDescription.json(d.capabilities), terminator: "")
            return
        }
        let endpoint = try chooseSocket()
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
        let server: DeviceServer
        var paths: [String] = []
        switch endpoint {
        case .path(let path):
            server = try DeviceServer(host: host, path: path, logger: logger, pollMicroseconds: pollMicroseconds)
            paths.append(path)
        case .inherited(.listening(let fd)):
            server = DeviceServer(host: host, inheritedListener: OwnedDescriptor(adopting: fd), logger: logger, pollMicroseconds: pollMicroseconds)
        case .inherited(.connected):
            server = DeviceServer(host: host, logger: logger, pollMicroseconds: pollMicroseconds)
        }
        // Where the device's socket is on the filesystem, if anywhere.
        let socketPath = server.path.isEmpty ? nil : server.path
        signal(SIGPIPE, SIG_IGN)
        if let display = device as? DisplayDevice {
            PlaneLog(display.planes, logger: logger).start()
            if !noDisplaySocket, let path = displaySocket ?? socketPath.map({ $0 + ".display" }) {
                let viewers = try DisplayServer(description: host.description, path: path, logger: logger)
                viewers.start()
                paths.append(path)
                logger.notice("display socket for viewers on \(path)")
            }
        }
        installTerminationHandler(paths: paths)
        let place: String
        switch endpoint {
        case .path(let path): place = path
        case .inherited(.listening(let fd)): place = "inherited descriptor \(fd.rawValue)" + (socketPath.map { " (\($0))" } ?? "")
        case .inherited(.connected(let fd)): place = "inherited descriptor \(fd.rawValue), connected to its client"
        }
        logger.notice("serving \(kind.id) on \(place)")
        // Once listening: the exact option that attaches it, for a person or a script.
        if let socketPath { print(qemuOption(socketPath)); fflush(nil) }
        ServiceManager.notify("READY=1\nSTATUS=serving \(kind.id) on \(place)")
        if case .inherited(.connected(let fd)) = endpoint {
            server.serve(connection: OwnedDescriptor(adopting: fd))
            logger.notice("the client left; a connected socket serves no one else")
            server.stop()
            return
        }
        server.serve()
    }

    /// Where a device is served: a path to listen on, or a socket handed in.
    enum Endpoint { case path(String), inherited(InheritedSocket) }

    /// `--socket-path`, `--fd`, or the one socket that socket activation
    /// passed (`LISTEN_FDS`), checked before anything is served.
    func chooseSocket() throws -> Endpoint {
        if let inheritedFD {
            do { return .inherited(try InheritedSocket.check(inheritedFD)) } catch { throw CommandFailure("--fd \(inheritedFD): \(error)") }
        }
        let activated = ServiceManager.listenFDs()
        if let socket {
            for passed in activated { close(passed.fd) }
            return .path(socket)
        }
        guard !activated.isEmpty else {
            throw CommandFailure("give the socket: --socket-path PATH or --fd FDNUM (or start umdev serve by socket activation)")
        }
        guard activated.count == 1 else {
            throw CommandFailure("socket activation passed \(activated.count) descriptors (\(activated.map(\.name).joined(separator: ", "))); umdev serve takes one")
        }
        do { return .inherited(try InheritedSocket.check(activated[0].fd)) } catch {
            throw CommandFailure("the socket passed by socket activation: \(error)")
        }
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
