import ArgumentParser
import CommandSupport
import Descriptors
import Foundation
import Glibc
import Lifecycle
import PCI
import SystemPackage
import VFIOUser

// The lifecycle commands: each sends one request to the daemon's control
// socket (Protocol/CONTROL.md) and prints the answer, as text or, with
// --dumpjson, as JSON (mdevctl's shapes for `types` and `list`).

/// Where the daemon is, and the output format.
struct ControlOptions: ParsableArguments {
    @Option(name: .customLong("run-dir"), help: ArgumentHelp(
        "The daemon's run directory; its control socket is DIR/control.sock (default $XDG_RUNTIME_DIR/umdev, or /run/umdev for root).",
        valueName: "dir"))
    var runDirectory: String?

    @Flag(help: "Print JSON instead of text.")
    var dumpjson = false

    var controlSocket: String { (runDirectory ?? DaemonConfiguration.defaultRunDirectory) + "/control.sock" }

    /// The daemon's answer; a refusal becomes this command's one-line error.
    func call(_ request: ControlRequest, descriptor: FileDescriptor? = nil) throws -> ControlResponse {
        let response: ControlResponse
        do { response = try ControlWire.call(request, path: controlSocket, descriptor: descriptor) } catch {
            throw CommandFailure(error.message)
        }
        guard response.ok else { throw CommandFailure(response.error?.message ?? "the daemon refused \(request.request)") }
        return response
    }
}

/// `--attr NAME=VALUE` options, in order.
func parseAttributes(_ items: [String], option: String = "--attr") throws -> Attributes? {
    guard !items.isEmpty else { return nil }
    return Attributes(try items.map { item in
        guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
            throw ValidationError("bad \(option) '\(item)': use NAME=VALUE")
        }
        return (String(item[..<eq]), String(item[item.index(after: eq)...]))
    })
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Prints rows as columns padded to their widest cell.
func printTable(_ rows: [[String]]) {
    guard let columns = rows.map(\.count).max() else { return }
    var widths = [Int](repeating: 0, count: columns)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    for row in rows {
        var line = ""
        for (i, cell) in row.enumerated() {
            line += i == row.count - 1 ? cell : cell.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0)
        }
        while line.last == " " { line.removeLast() }
        print(line)
    }
}

/// The parent name under which `--dumpjson` lists types and devices, as
/// mdevctl names a parent device.
let parentName = "umdev"

/// The QEMU option that attaches the device on `socket`, ready to paste
/// into a shell: the path JSON-escaped inside the option, the option
/// single-quoted for the shell.
func qemuOption(_ socket: String) -> String {
    let json = JSONValue.object([
        ("driver", .string("vfio-user-pci")),
        ("socket", .object([("type", .string("unix")), ("path", .string(socket))])),
    ]).serialized
    return "-device '" + json.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

func describe(display: DisplayInfo) -> String {
    switch display.kind {
    case "region": return "region plane" + (display.edid ? ", EDID" : "")
    case "dmabuf":
        var s = "dmabuf plane"
        if display.edid {
            let w = display.maxWidth ?? 0, h = display.maxHeight ?? 0
            s += w == 0 ? ", EDID (no size limit)" : ", EDID up to \(w)x\(h)"
        }
        return s
    default: return "none"
    }
}

// MARK: types

struct Types: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "types",
        abstract: "List the device types, with what each instance takes and what a client will see.",
        discussion: """
        Asks the daemon when one runs (available instances then reflect the instances it
        has); without one, shows the default budgets. --dumpjson describes every type
        completely enough to configure a VM before any device exists: PCI ids, regions,
        IRQs, reset, migration, display. Its shape is mdevctl's:
        [{"umdev": [{"TYPE": {"available_instances": N, "device_api": …, "name": …, …}}]}]
        """)

    @Flag(help: "Print only the type ids, one per line.")
    var names = false

    @OptionGroup var control: ControlOptions

    func run() throws {
        if names {
            for t in Catalog.all { print(t.id) }
            return
        }
        var types: [TypeInfo]
        if let answer = try? ControlWire.call(ControlRequest("types"), path: control.controlSocket, timeout: 10), answer.ok, let t = answer.types {
            types = t
        } else {
            let budgets = Budgets()
            types = Catalog.all.compactMap { $0.info(available: budgets.available($0)) }
            if !control.dumpjson { printError("no daemon at \(control.controlSocket): available instances are the default budgets") }
        }
        if control.dumpjson {
            try printJSON([[parentName: types.map { [$0.id: $0] }]])
            return
        }
        print(parentName)
        for t in types {
            print("  \(t.id)\(t.sample ? "" : "  (protocol test device, not a kernel sample)")")
            var rows: [[String]] = [
                ["    Available instances:", "\(t.availableInstances)"],
                ["    Device API:", t.deviceAPI],
                ["    Name:", t.name],
            ]
            if let d = t.description { rows.append(["    Description:", d]) }
            rows.append(["    Takes:", "\(t.cost) of the \(t.pool) budget (\(t.unit))"])
            rows.append(["    PCI:", String(format: "%04x:%04x, class %06x", t.device.vendorID, t.device.deviceID, t.device.classCode)])
            rows.append(["    Display:", describe(display: t.device.display)])
            if let m = t.device.migration { rows.append(["    Migration:", "\(m.model) state v\(m.version) (reads v\(m.reads[0])–v\(m.reads[1]))"]) }
            rows.append(["    Reset:", t.device.reset ? "yes" : "no"])
            let given = t.attributes.filter { $0.kind != .status }.map { a in a.name + (a.defaultValue.map { "=\($0)" } ?? "") + (a.kind == .runtime ? " (runtime)" : "") }
            rows.append(["    Attributes:", given.joined(separator: ", ")])
            printTable(rows)
        }
    }
}

// MARK: list

/// One entry of `list --dumpjson`: mdevctl's keys first, umdev's after.
struct ListEntry: Encodable {
    var type: String
    var start: String?
    var attrs: Attributes
    var state: String?
    var socket: String?
    var displaySocket: String?
    var clientPID: Int32?
    var ports: [String]?
    var defined: Bool?
    var device: DeviceProfile?
    enum CodingKeys: String, CodingKey {
        case type = "mdev_type", start, attrs, state, socket, displaySocket = "display_socket", clientPID = "client_pid", ports, defined, device
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List running instances, or with --defined the stored definitions.",
        discussion: """
        Text: one instance per line (UUID, type, state, device socket), "(defined)" when a
        definition has the same UUID; --verbose adds attributes, the display socket and the
        attached client. --dumpjson: [{"umdev": [{"UUID": {"mdev_type": …, "attrs": […], …}}]}].
        """)

    @Flag(name: [.short, .long], help: "List definitions instead of running instances.")
    var defined = false

    @Flag(name: [.short, .long], help: "Show attributes and sockets too.")
    var verbose = false

    @Option(name: .long, help: "Only this UUID.")
    var uuid: String?

    @Option(name: .long, help: "Only this type.")
    var type: String?

    @OptionGroup var control: ControlOptions

    func run() throws {
        var request = ControlRequest("list")
        request.defined = defined
        let answer = try control.call(request)
        let wanted = uuid.flatMap(UUIDs.canonical)
        if uuid != nil && wanted == nil { throw ValidationError("'\(uuid!)' is not a UUID") }
        if defined {
            let items = (answer.definitions ?? []).filter { (wanted == nil || $0.uuid == wanted) && (type == nil || $0.definition.type == type) }
            if control.dumpjson {
                try printJSON([[parentName: items.map { [$0.uuid: ListEntry(type: $0.definition.type, start: $0.definition.start.rawValue,
                                                                              attrs: $0.definition.attributes)] }]])
                return
            }
            for d in items {
                printTable([[d.uuid, d.definition.type, d.definition.start.rawValue, d.running ? "(running)" : ""]])
                if verbose { printAttributes(d.definition.attributes) }
            }
            return
        }
        let items = (answer.instances ?? []).filter { (wanted == nil || $0.uuid == wanted) && (type == nil || $0.type == type) }
        if control.dumpjson {
            try printJSON([[parentName: items.map { i in
                [i.uuid: ListEntry(type: i.type, start: nil, attrs: i.attrs, state: i.state, socket: i.socket, displaySocket: i.displaySocket,
                                   clientPID: i.clientPID, ports: i.ports, defined: i.defined, device: verbose ? i.device : nil)]
            }]])
            return
        }
        if verbose {
            for i in items {
                print("\(i.uuid) \(i.type)\(i.defined ? " (defined)" : "")")
                var rows = [["  State:", i.state + (i.clientPID.map { " (client pid \($0))" } ?? "")], ["  Socket:", i.socket]]
                if let d = i.displaySocket { rows.append(["  Display socket:", d]) }
                for (n, p) in (i.ports ?? []).enumerated() { rows.append(["  Port \(n):", p]) }
                printTable(rows)
                printAttributes(i.attrs)
            }
        } else {
            printTable(items.map { [$0.uuid, $0.type, $0.state, $0.socket, $0.defined ? "(defined)" : ""] })
        }
    }

    func printAttributes(_ attrs: Attributes) {
        guard !attrs.list.isEmpty else { return }
        print("  Attrs:")
        for (i, a) in attrs.list.enumerated() { print("    @{\(i)}: {\"\(a.name)\":\"\(a.value)\"}") }
    }
}

// MARK: start, stop

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start",
        abstract: "Start an instance: of a type (a transient one), or the definition with --uuid.",
        discussion: """
        Prints the UUID (generated unless --uuid gives one), the device socket, and the
        QEMU option that attaches it. Creation attributes (--attr NAME=VALUE, see `umdev
        types`): mtty port0/port1 = loopback | pty | unix:PATH; mbochs edid_max = WxH;
        display types display_socket = PATH | none; any type label = TEXT. The type's
        budget is committed now and returned by `umdev stop`.
        """)

    @Option(name: [.short, .long], help: "The instance's UUID (a definition's, to start it).")
    var uuid: String?

    @Option(name: [.short, .long], help: "The device type (see `umdev types`).")
    var type: String?

    @Option(name: .long, help: ArgumentHelp("An attribute, NAME=VALUE; repeatable, applied in order.", valueName: "name=value"))
    var attr: [String] = []

    @OptionGroup var control: ControlOptions

    func run() throws {
        var request = ControlRequest("start")
        request.uuid = uuid
        request.type = type
        request.attrs = try parseAttributes(attr)
        guard type != nil || uuid != nil else { throw ValidationError("give --type, or the --uuid of a definition") }
        let answer = try control.call(request)
        guard let i = answer.instance else { throw CommandFailure("the daemon did not describe the instance") }
        if control.dumpjson { return try printJSON(i) }
        var rows = [["uuid:", i.uuid], ["type:", i.type], ["socket:", i.socket]]
        if let d = i.displaySocket { rows.append(["display socket:", d]) }
        for (n, p) in (i.ports ?? []).enumerated() { rows.append(["port\(n):", p]) }
        rows.append(["qemu:", qemuOption(i.socket)])
        printTable(rows)
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Stop an instance and return its budget.",
        discussion: """
        If a client holds the device, the daemon first signals the device's REQ interrupt
        (VFIO's request to release it, which a VMM answers by unplugging the device) and
        waits up to --timeout seconds for the client to go. --force drops the client at once.
        """)

    @Option(name: [.short, .long], help: "The instance's UUID.")
    var uuid: String

    @Flag(help: "Drop an attached client instead of asking it to release the device.")
    var force = false

    @Option(help: ArgumentHelp("Seconds to wait for a client asked to release the device (default: the daemon's).", valueName: "seconds"))
    var timeout: Double?

    @OptionGroup var control: ControlOptions

    func run() throws {
        var request = ControlRequest("stop")
        request.uuid = uuid
        request.force = force
        request.timeout = timeout
        let answer = try control.call(request)
        if control.dumpjson { return try printJSON(answer) }
        switch answer.released {
        case "released": print("\(answer.uuid ?? uuid): stopped (its client released it)")
        case "dropped": print("\(answer.uuid ?? uuid): stopped (its client was dropped)")
        default: print("\(answer.uuid ?? uuid): stopped")
        }
    }
}

// MARK: define, undefine, modify

struct Define: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "define",
        abstract: "Store a definition: a type with attributes, or (--uuid alone) a running instance as created.",
        discussion: """
        Definitions are JSON files in the daemon's config directory, in mdevctl's format
        ({"mdev_type", "start": "auto"|"manual", "attrs": [{NAME: VALUE}, …]}). --auto ones
        start with the daemon. Prints the UUID.
        """)

    @Option(name: [.short, .long], help: "The UUID (generated if omitted).")
    var uuid: String?

    @Option(name: [.short, .long], help: "The device type.")
    var type: String?

    @Flag(name: [.short, .long], help: "Start it when the daemon starts.")
    var auto = false

    @Option(name: .long, help: ArgumentHelp("An attribute, NAME=VALUE; repeatable, applied in order.", valueName: "name=value"))
    var attr: [String] = []

    @OptionGroup var control: ControlOptions

    func run() throws {
        var request = ControlRequest("define")
        request.uuid = uuid
        request.type = type
        request.auto = auto
        request.attrs = try parseAttributes(attr)
        let answer = try control.call(request)
        if control.dumpjson { return try printJSON(answer) }
        print(answer.uuid ?? "")
    }
}

struct Undefine: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "undefine", abstract: "Remove a definition (a running instance keeps running).")

    @Option(name: [.short, .long], help: "The definition's UUID.")
    var uuid: String

    @OptionGroup var control: ControlOptions

    func run() throws {
        var request = ControlRequest("undefine")
        request.uuid = uuid
        let answer = try control.call(request)
        if control.dumpjson { try printJSON(answer) }
    }
}

struct Modify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "modify",
        abstract: "Change a definition; it applies at the definition's next start.",
        discussion: "Attributes named by --del-attr are removed first, then --add-attr ones appended in order.")

    @Option(name: [.short, .long], help: "The definition's UUID.")
    var uuid: String

    @Option(name: [.short, .long], help: "A new type.")
    var type: String?

    @Flag(name: .long, help: "Start it when the daemon starts.")
    var auto = false

    @Flag(name: .long, help: "Start it only when asked.")
    var manual = false

    @Option(name: .long, help: ArgumentHelp("An attribute to append, NAME=VALUE; repeatable.", valueName: "name=value"))
    var addAttr: [String] = []

    @Option(name: .long, help: ArgumentHelp("An attribute to remove, by name; repeatable.", valueName: "name"))
    var delAttr: [String] = []

    @OptionGroup var control: ControlOptions

    func run() throws {
        guard !(auto && manual) else { throw ValidationError("--auto and --manual conflict") }
        var request = ControlRequest("modify")
        request.uuid = uuid
        request.type = type
        request.auto = auto ? true : manual ? false : nil
        request.addAttrs = try parseAttributes(addAttr, option: "--add-attr")
        request.delAttrs = delAttr.isEmpty ? nil : delAttr
        let answer = try control.call(request)
        if control.dumpjson { try printJSON(answer) }
    }
}

// MARK: attributes

struct Attribute: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attribute",
        abstract: "Get, set, or probe for an attribute of a running instance.",
        discussion: """
        get NAME prints its value; set NAME VALUE changes a runtime attribute (creation
        attributes are fixed, status ones read-only); has NAME prints yes or no and the
        attribute's kind, and changes nothing.
        """)

    enum Operation: String, ExpressibleByArgument, CaseIterable { case get, set, has }

    @Argument(help: "get, set or has.")
    var operation: Operation

    @Argument(help: "The attribute's name.")
    var name: String

    @Argument(help: "The value (set).")
    var value: String?

    @Option(name: [.short, .long], help: "The instance's UUID.")
    var uuid: String

    @OptionGroup var control: ControlOptions

    func validate() throws {
        if operation == .set && value == nil { throw ValidationError("set needs a VALUE") }
        if operation != .set && value != nil { throw ValidationError("\(operation.rawValue) takes no VALUE") }
    }

    func run() throws {
        var request = ControlRequest("attribute-\(operation.rawValue)")
        request.uuid = uuid
        request.name = name
        request.value = value
        let answer = try control.call(request)
        if control.dumpjson { return try printJSON(answer) }
        switch operation {
        case .get: print(answer.value ?? "")
        case .set: break
        case .has: print(answer.has == true ? "yes (\(answer.kind?.rawValue ?? "?"))" : "no")
        }
    }
}

// MARK: commands with side effects

struct Reset: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reset", abstract: "Reset an instance no client holds, as DEVICE_RESET does.")

    @Option(name: [.short, .long], help: "The instance's UUID.")
    var uuid: String

    @OptionGroup var control: ControlOptions

    func run() throws {
        var request = ControlRequest("reset")
        request.uuid = uuid
        let answer = try control.call(request)
        if control.dumpjson { try printJSON(answer) }
    }
}

struct MigrateSave: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-save",
        abstract: "Save an idle instance's state to a file (RUNNING → STOP_COPY → RUNNING).",
        discussion: "The file starts with the state's identity (model, version, type, parameters): `umdev compat --from FILE` reads it.")

    @Option(name: [.short, .long], help: "The instance's UUID.")
    var uuid: String

    @Option(name: .long, help: "The file to write.")
    var out: String

    @OptionGroup var control: ControlOptions

    func run() throws {
        guard let file = OwnedDescriptor(adoptingRaw: open(out, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)) else {
            throw CommandFailure("cannot open \(out): \(String(cString: strerror(errno)))")
        }
        var request = ControlRequest("migrate-save")
        request.uuid = uuid
        let answer = try control.call(request, descriptor: file.fileDescriptor)
        if control.dumpjson { return try printJSON(answer) }
        print("\(answer.bytes ?? 0) bytes to \(out)")
    }
}

struct MigrateLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-load",
        abstract: "Load a saved state into an idle instance (RUNNING → RESUMING → RUNNING).",
        discussion: "A state `umdev compat` calls incompatible is refused, with the same reason, and the instance is left as it was.")

    @Option(name: [.short, .long], help: "The instance's UUID.")
    var uuid: String

    @Option(name: .customLong("in"), help: "The file to read.")
    var input: String

    @OptionGroup var control: ControlOptions

    func run() throws {
        guard let file = OwnedDescriptor(adoptingRaw: open(input, O_RDONLY | O_CLOEXEC)) else {
            throw CommandFailure("cannot open \(input): \(String(cString: strerror(errno)))")
        }
        var request = ControlRequest("migrate-load")
        request.uuid = uuid
        let answer = try control.call(request, descriptor: file.fileDescriptor)
        if control.dumpjson { return try printJSON(answer) }
        print("\(answer.bytes ?? 0) bytes from \(input)")
    }
}

struct Compat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compat",
        abstract: "Say whether a state can go to a device, and why not, before any data moves.",
        discussion: """
        --from is a running instance's UUID or a file migrate-save wrote; --to is a running
        instance's UUID or a type (with the --attr it would be created with). The answer is
        the rule a resume applies: same device model, a state version the target reads, the
        same creation parameters (port count, resolution, video memory, EDID limit).
        Exit status 0 when compatible, 2 when not, 1 on errors.
        """)

    @Option(help: "A running instance's UUID, or a saved state file.")
    var from: String

    @Option(help: "A running instance's UUID, or a type.")
    var to: String

    @Option(name: .long, help: ArgumentHelp("The target type's attributes, NAME=VALUE; repeatable.", valueName: "name=value"))
    var attr: [String] = []

    @OptionGroup var control: ControlOptions

    func run() throws {
        var request = ControlRequest("compat")
        var file: OwnedDescriptor? = nil
        if let u = UUIDs.canonical(from) {
            request.from = u
        } else {
            file = OwnedDescriptor(adoptingRaw: open(from, O_RDONLY | O_CLOEXEC))
            guard file != nil else { throw CommandFailure("--from \(from): not a UUID, and \(String(cString: strerror(errno))) opening it as a file") }
        }
        if let u = UUIDs.canonical(to) { request.to = u } else { request.type = to }
        request.attrs = try parseAttributes(attr)
        if request.to != nil && request.attrs != nil { throw ValidationError("--attr goes with a type; a running instance has its own") }
        let answer = try control.call(request, descriptor: file?.fileDescriptor)
        if control.dumpjson {
            try printJSON(answer)
        } else if answer.compatible == true {
            print("compatible: \(answer.source.map { "\($0)" } ?? from) → \(answer.target.map { "\($0)" } ?? to)")
        } else {
            print("incompatible: \(answer.reason ?? "")")
        }
        if answer.compatible != true { throw ExitCode(2) }
    }
}

struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade",
        abstract: "Upgrade the running daemon in place, its instances and their clients kept.",
        discussion: """
        The daemon checks the new binary against a handover of everything it serves, then
        execs it (same pid); the new process takes over the control socket and every
        instance with its client, and answers here. If the binary is missing, fails, or
        cannot read the handover, the daemon goes on serving as before and this command
        exits 1 with the reason. SIGUSR2 to the daemon does the same as this command
        without --binary. See README, "Live upgrade".
        """)

    @Option(name: .long, help: ArgumentHelp(
        "The binary to upgrade to, an absolute path (default: the path the daemon was started from).", valueName: "path"))
    var binary: String?

    @OptionGroup var control: ControlOptions

    func validate() throws {
        if let binary, !binary.hasPrefix("/") { throw ValidationError("--binary takes an absolute path") }
    }

    func run() throws {
        var request = ControlRequest("upgrade")
        request.path = binary
        let answer = try control.call(request)
        if control.dumpjson { return try printJSON(answer) }
        guard let u = answer.upgrade else { throw CommandFailure("the daemon answered without saying how the upgrade went") }
        print("upgraded the umdev daemon (pid \(u.pid)) from \(u.previousVersion) to \(u.version); \(u.instances) instance(s) handed over")
    }
}
