import ArgumentParser
import Glibc
import Logging
import VFIOUserServer

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve one device on a vfio-user socket.",
        discussion: """
        Types: \(DeviceType.all.map(\.name).joined(separator: ", ")) (see `umdev types`).
        The "test" types are protocol test devices, not sample devices.
        One client at a time is served; when it disconnects the device keeps
        its state and the next client may connect. Stop with SIGINT or SIGTERM.
        """)

    @Option(name: .long, help: "Device type to serve.")
    var type: String = "test"

    @Option(name: .long, help: "UNIX socket path to listen on.")
    var socket: String

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.bootstrap()
        let logger = Logger(label: "umdev")
        guard let kind = DeviceType.named(type) else {
            throw ValidationError("unknown device type '\(type)'; known: \(DeviceType.all.map(\.name).joined(separator: ", "))")
        }
        let device = try kind.make()
        let server = try DeviceServer(host: DeviceHost(device: device, typeName: kind.name), path: socket, logger: logger)
        signal(SIGPIPE, SIG_IGN)
        installTerminationHandler(path: socket)
        logger.notice("serving \(kind.name) on \(socket)")
        server.serve()
    }
}

/// Removes the socket file and exits on SIGINT/SIGTERM.
private nonisolated(unsafe) var socketPathForSignal: UnsafeMutablePointer<CChar>?

func installTerminationHandler(path: String) {
    socketPathForSignal = strdup(path)
    let handler: @convention(c) (Int32) -> Void = { _ in
        if let p = socketPathForSignal { unlink(p) }
        _exit(0)
    }
    signal(SIGINT, handler)
    signal(SIGTERM, handler)
}
