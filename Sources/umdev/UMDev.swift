import ArgumentParser
import Glibc
import Logging

@main
struct UMDev: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "umdev",
        abstract: "Linux's sample mediated devices as vfio-user servers.",
        discussion: """
        Each device instance is a vfio-user server on a UNIX socket. Attach it to QEMU with
          -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"PATH"}}'
        `umdev serve` runs one device; `umdev daemon` runs many, managed with start, stop,
        list, define and the other lifecycle commands, as mdevctl manages mdev devices.
        """,
        subcommands: [
            Serve.self, DaemonCommand.self, Types.self, List.self, Start.self, Stop.self, Define.self, Undefine.self,
            Modify.self, Attribute.self, Reset.self, MigrateSave.self, MigrateLoad.self, Compat.self,
            Info.self, View.self, BackendJSON.self, PlayGuest.self, Bench.self,
        ],
        defaultSubcommand: nil)
}

/// Log level option shared by the commands.
struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func bootstrap() {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Writes one line to standard error.
func printError(_ message: String) {
    let line = message + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

/// A command that could not do its job (not a usage error): the message is
/// printed as "Error: ..." and the exit status is 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
