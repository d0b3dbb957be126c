import ArgumentParser
import CommandSupport
import Foundation
import Lifecycle

/// The JSON descriptions the vfio-user spec's backend program conventions
/// ask a backend to ship under share/vfio-user (Protocol/BACKEND.md).
struct BackendJSON: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backend-json",
        abstract: "Print or write the vfio-user backend descriptions of the device types.",
        discussion: """
        One JSON file per type, as the vfio-user spec's "Backend Program Conventions"
        ask (modelled on vhost-user's): description, type, binary, arguments, tags,
        features and the device's identity. Packagers install them under
        PREFIX/share/vfio-user (scripts/install.sh does). The schema is in
        Protocol/BACKEND.md.
        """)

    @Option(name: .long, help: "The installed path of umdev to write into the descriptions.")
    var binary: String = "/usr/local/bin/umdev"

    @Option(name: .long, help: ArgumentHelp("Write one file per type into this directory.", valueName: "dir"))
    var output: String?

    @Option(name: .long, help: "Print only this type's description.")
    var type: String?

    func run() throws {
        guard binary.hasPrefix("/") else { throw ValidationError("--binary is an absolute path") }
        let types = try type.map { id -> [DeviceType] in
            guard let t = Catalog.type(id) else { throw ValidationError("unknown device type '\(id)'") }
            return [t]
        } ?? Catalog.all
        let descriptions = try types.map { t -> BackendDescription in
            guard let d = BackendDescription(type: t, binary: binary) else { throw CommandFailure("cannot build a \(t.id) to describe it") }
            return d
        }
        guard let output else {
            for d in descriptions { print(BackendDescription.json(d), terminator: "") }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            for d in descriptions {
                try Data(BackendDescription.json(d).utf8).write(to: URL(fileURLWithPath: output).appendingPathComponent(d.fileName),
                                                               options: .atomic)
            }
        } catch {
            throw CommandFailure("cannot write into \(output): \(error.localizedDescription)")
        }
    }
}
