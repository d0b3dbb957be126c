import ArgumentParser
import CommandSupport
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
            Modify.self, Attribute.self, Reset.self, MigrateSave.self, MigrateLoad.self, Compat.self, Upgrade.self,
            Info.self, View.self, BackendJSON.self,
        ],
        defaultSubcommand: nil)
}
