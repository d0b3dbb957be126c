import Foundation
import Glibc
import Lifecycle
import Logging
import PCI
import Synchronization
import SystemPackage
import Testing
import UnixSocket
import VFIOUser
import VFIOUserClient
import VFIOUserServer

/// A daemon in temporary run and config directories, answering over its
/// real control socket.
final class TestDaemon: @unchecked Sendable {
    // @unchecked: `daemon` changes only in `restart`, on the test's thread.
    let root: String
    var configuration: DaemonConfiguration
    var daemon: Daemon?
    let log = LogCapture()

    init(budgets: [Pool: Int] = [:], stopTimeout: Double = 10) throws {
        root = "/tmp/umdev-daemon-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        configuration = DaemonConfiguration(runDirectory: root + "/run", configDirectory: root + "/config")
        configuration.budgets = budgets
        configuration.stopTimeout = stopTimeout
        try launch()
    }

    func launch() throws {
        let d = try Daemon(configuration, logger: log.logger)
        d.start()
        daemon = d
    }

    /// Stops the daemon (its instances with it) and starts a new one on the same directories.
    func restart() throws {
        daemon?.shutdown()
        daemon = nil
        try launch()
    }

    deinit {
        daemon?.shutdown()
        _ = try? FileManager.default.removeItem(atPath: root)
    }

    var socket: String { configuration.controlSocket }

    func call(_ request: ControlRequest, descriptor: Int32? = nil) throws -> ControlResponse {
        try ControlWire.call(request, path: socket, descriptor: descriptor.map { FileDescriptor(rawValue: $0) }, timeout: 30)
    }

    func request(_ name: String, _ fill: (inout ControlRequest) -> Void = { _ in }) throws -> ControlResponse {
        var r = ControlRequest(name)
        fill(&r)
        return try call(r)
    }

    /// Starts an instance; fails the test when the daemon refuses.
    @discardableResult
    func start(_ type: String, uuid: String? = nil, attrs: [(String, String)] = [],
               sourceLocation: SourceLocation = #_sourceLocation) throws -> InstanceInfo {
        let r = try request("start") { $0.type = type; $0.uuid = uuid; $0.attrs = attrs.isEmpty ? nil : Attributes(attrs) }
        #expect(r.ok, "\(r.error?.message ?? "")", sourceLocation: sourceLocation)
        return try #require(r.instance, sourceLocation: sourceLocation)
    }

    func stop(_ uuid: String, force: Bool = false, timeout: Double? = nil) throws -> ControlResponse {
        try request("stop") { $0.uuid = uuid; $0.force = force; $0.timeout = timeout }
    }

    func available() throws -> [String: Int] {
        let types = try #require(try request("types").types)
        return Dictionary(uniqueKeysWithValues: types.map { ($0.id, $0.availableInstances) })
    }

    func list() throws -> [InstanceInfo] { try #require(try request("list").instances) }
}

@Suite("lifecycle daemon: budgets", .serialized)
struct DaemonBudgetTests {
    @Test("an existing directory open to others is refused and left as it was, never chmodded")
    func sharedDirectoryRefused() throws {
        let shared = "/tmp/umdev-shared-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        #expect(mkdir(shared, 0o755) == 0 && chmod(shared, 0o755) == 0)
        defer { rmdir(shared + "/config"); rmdir(shared) }
        let config = DaemonConfiguration(runDirectory: shared, configDirectory: shared + "/config")
        let logger = quietLogger
        do {
            _ = try Daemon(config, logger: logger)
            Issue.record("a 0755 run directory was accepted")
        } catch {
            #expect(error.message.contains("open to other users (mode 755)"))
        }
        var st = stat()
        #expect(stat(shared, &st) == 0 && st.st_mode & 0o777 == 0o755)
    }

    @Test("mtty: 24 ports shared by mtty-1 (1 each) and mtty-2 (2 each); a stopped instance returns its share")
    func mixedMTTY() throws {
        let d = try TestDaemon()
        var a = try d.available()
        #expect(a["mtty-1"] == 24 && a["mtty-2"] == 12)
        var twos: [String] = []
        for _ in 0..<11 { twos.append(try d.start("mtty-2").uuid) }
        a = try d.available()
        #expect(a["mtty-1"] == 2 && a["mtty-2"] == 1)
        let one = try d.start("mtty-1").uuid
        a = try d.available()
        #expect(a["mtty-1"] == 1 && a["mtty-2"] == 0)
        // mtty-2 no longer fits; the refusal names the budget and changes nothing.
        let refused = try d.request("start") { $0.type = "mtty-2" }
        #expect(!refused.ok && refused.error?.code == "budget")
        #expect(refused.error?.message.contains("mtty budget's 24 ports, and 1 are left") == true)
        #expect(try d.list().count == 12)
        #expect(try d.available() == a)
        _ = try d.start("mtty-1")
        #expect(try d.available()["mtty-1"] == 0)
        #expect(try d.request("start") { $0.type = "mtty-1" }.error?.code == "budget")
        // Stopping returns the share: one mtty-2 frees two ports.
        #expect(try d.stop(twos[0]).ok)
        a = try d.available()
        #expect(a["mtty-1"] == 2 && a["mtty-2"] == 1)
        #expect(try d.stop(one).ok)
        #expect(try d.available()["mtty-1"] == 3)
        // Other pools were never touched.
        #expect(a["mdpy-vga"] == 4 && a["mbochs-large"] == 4)
    }

    @Test("mdpy: 4 instances across its three types")
    func mdpy() throws {
        let d = try TestDaemon()
        var uuids: [String] = []
        for t in ["mdpy-vga", "mdpy-xga", "mdpy-hd", "mdpy-vga"] {
            uuids.append(try d.start(t).uuid)
        }
        let a = try d.available()
        #expect(a["mdpy-vga"] == 0 && a["mdpy-xga"] == 0 && a["mdpy-hd"] == 0)
        let refused = try d.request("start") { $0.type = "mdpy-hd" }
        #expect(refused.error?.code == "budget" && refused.error?.message.contains("mdpy") == true)
        #expect(try d.stop(uuids[2]).ok)
        #expect(try d.available()["mdpy-xga"] == 1)
        #expect(try d.list().count == 3)
    }

    @Test("mbochs: 256 MiB of VRAM across small (4), medium (16) and large (64)")
    func mbochs() throws {
        let d = try TestDaemon()
        var a = try d.available()
        #expect(a["mbochs-small"] == 64 && a["mbochs-medium"] == 16 && a["mbochs-large"] == 4)
        let large = try d.start("mbochs-large").uuid                         // 64 used
        _ = try d.start("mbochs-medium")                                       // 80
        for _ in 0..<2 { _ = try d.start("mbochs-large") }                    // 208
        a = try d.available()
        #expect(a["mbochs-small"] == 12 && a["mbochs-medium"] == 3 && a["mbochs-large"] == 0)
        #expect(try d.request("start") { $0.type = "mbochs-large" }.error?.code == "budget")
        for _ in 0..<3 { _ = try d.start("mbochs-medium") }                   // 256
        a = try d.available()
        #expect(a["mbochs-small"] == 0 && a["mbochs-medium"] == 0)
        let refused = try d.request("start") { $0.type = "mbochs-small" }
        #expect(refused.error?.message == "no room for mbochs-small: it needs 4 of the mbochs budget's 256 MiB of VRAM, and 0 are left")
        #expect(try d.stop(large).ok)
        a = try d.available()
        #expect(a["mbochs-large"] == 1 && a["mbochs-small"] == 16)
    }

    @Test("budgets come from the daemon's configuration; the test types have their own")
    func configured() throws {
        let d = try TestDaemon(budgets: [.mtty: 3, .mbochs: 20, .test: 1])
        let a = try d.available()
        #expect(a["mtty-1"] == 3 && a["mtty-2"] == 1 && a["mbochs-medium"] == 1 && a["mbochs-large"] == 0 && a["test"] == 1)
        _ = try d.start("test")
        #expect(try d.request("start") { $0.type = "test-nommap" }.error?.code == "budget")
    }

    @Test("eight threads racing creates never over-commit")
    func racingCreates() throws {
        let d = try TestDaemon(budgets: [.mtty: 10])
        let successes = Mutex(0)
        let refusals = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<4 {
                guard let r = try? d.request("start", { $0.type = "mtty-2" }) else { continue }
                if r.ok { successes.withLock { $0 += 1 } } else if r.error?.code == "budget" { refusals.withLock { $0 += 1 } }
            }
        }
        #expect(successes.withLock { $0 } == 5)
        #expect(refusals.withLock { $0 } == 27)
        #expect(try d.list().count == 5)
        #expect(try d.available()["mtty-1"] == 0)
    }

    @Test("a duplicate UUID is refused; UUIDs are lowercased; a bad one is invalid")
    func uuids() throws {
        let d = try TestDaemon()
        let upper = "4A1E0C5B-0F6D-4C3E-9D8E-1F2A3B4C5D6E"
        let i = try d.start("mtty-1", uuid: upper)
        #expect(i.uuid == upper.lowercased())
        #expect(i.socket == d.configuration.runDirectory + "/\(upper.lowercased()).sock")
        let again = try d.request("start") { $0.type = "mtty-2"; $0.uuid = upper.lowercased() }
        #expect(again.error?.code == "exists")
        #expect(try d.available()["mtty-1"] == 23)
        #expect(try d.request("start") { $0.type = "mtty-1"; $0.uuid = "not-a-uuid" }.error?.code == "invalid")
        #expect(try d.request("start") { $0.type = "nope" }.error?.code == "not-found")
        #expect(try d.request("start") { $0.type = "mtty-1"; $0.attrs = Attributes([("port0", "serial")]) }.error?.code == "invalid")
        #expect(try d.request("start") { $0.type = "mtty-1"; $0.attrs = Attributes([("port1", "pty")]) }.error?.code == "invalid")
        #expect(try d.available()["mtty-1"] == 23)
    }
}

@Suite("lifecycle daemon: definitions", .serialized)
struct DaemonDefinitionTests {
    @Test("definitions survive a restart; auto ones come back with their attributes")
    func persistence() throws {
        let d = try TestDaemon()
        let socketLine = d.root + "/line.sock"
        let auto = try #require(try d.request("define") {
            $0.type = "mtty-2"; $0.auto = true; $0.attrs = Attributes([("port1", "unix:\(socketLine)"), ("label", "console")])
        }.uuid)
        let manual = try #require(try d.request("define") { $0.type = "mbochs-small"; $0.attrs = Attributes([("edid_max", "640x480")]) }.uuid)
        // The file is mdevctl's format, attributes in order.
        let file = try String(contentsOfFile: "\(d.configuration.configDirectory)/\(auto).json", encoding: .utf8)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(file.utf8)) as? [String: Any])
        #expect(json["mdev_type"] as? String == "mtty-2" && json["start"] as? String == "auto")
        #expect((json["attrs"] as? [[String: String]]) == [["port1": "unix:\(socketLine)"], ["label": "console"]])
        var st = stat()
        #expect(stat(d.configuration.configDirectory, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(stat(d.configuration.runDirectory, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(stat(d.socket, &st) == 0 && st.st_mode & 0o777 == 0o600)

        try d.restart()
        let running = try d.list()
        #expect(running.map(\.uuid) == [auto])
        let i = try #require(running.first)
        #expect(i.type == "mtty-2" && i.defined)
        #expect(i.attrs == Attributes([("port1", "unix:\(socketLine)"), ("label", "console")]))
        #expect(i.ports == ["loopback", socketLine])
        #expect(try d.request("attribute-get") { $0.uuid = auto; $0.name = "label" }.value == "console")
        #expect(try d.request("attribute-get") { $0.uuid = auto; $0.name = "port1" }.value == "unix:\(socketLine)")
        #expect(try d.available()["mtty-2"] == 11)
        // The manual one is defined, not running, and starts by UUID.
        let defs = try #require(try d.request("list") { $0.defined = true }.definitions)
        #expect(defs.map(\.uuid).sorted() == [auto, manual].sorted())
        #expect(defs.first { $0.uuid == manual }?.running == false)
        let started = try #require(try d.request("start") { $0.uuid = manual }.instance)
        #expect(started.type == "mbochs-small" && started.attrs == Attributes([("edid_max", "640x480")]))
        #expect(started.device?.display.maxWidth == 640)
    }

    @Test("a corrupt definition is skipped with its name in the log; the others load")
    func corrupt() throws {
        let d = try TestDaemon()
        let good = try #require(try d.request("define") { $0.type = "mtty-1"; $0.auto = true }.uuid)
        let dir = d.configuration.configDirectory
        let bad = [
            ("11111111-1111-1111-1111-111111111111", "{\"mdev_type\": \"mtty-1\", \"attrs\": [{\"port0\": "),
            ("22222222-2222-2222-2222-222222222222", "{\"mdev_type\": \"mtty-9\"}"),
            ("33333333-3333-3333-3333-333333333333", "{\"mdev_type\": \"mtty-1\", \"attrs\": [{\"port0\": \"serial\"}]}"),
            ("44444444-4444-4444-4444-444444444444", "{\"mdev_type\": \"mtty-1\", \"attrs\": [{\"a\": \"1\", \"b\": \"2\"}]}"),
            ("not-a-uuid", "{\"mdev_type\": \"mtty-1\"}"),
        ]
        for (name, text) in bad { try text.write(toFile: "\(dir)/\(name).json", atomically: true, encoding: .utf8) }
        try d.restart()
        for (name, _) in bad {
            #expect(d.log.all.contains { $0.hasPrefix("error skipping definition \(dir)/\(name).json: ") }, "\(name)")
        }
        #expect(try d.list().map(\.uuid) == [good])
        #expect(try d.request("list") { $0.defined = true }.definitions?.map(\.uuid) == [good])
    }

    @Test("define, modify and undefine; a running instance can be defined as created")
    func editing() throws {
        let d = try TestDaemon()
        let uuid = "0e0f1d2c-3b4a-4958-8776-a5b4c3d2e1f0"
        #expect(try d.request("define") { $0.uuid = uuid; $0.type = "mtty-2" }.uuid == uuid)
        #expect(try d.request("define") { $0.uuid = uuid; $0.type = "mtty-1" }.error?.code == "exists")
        #expect(try d.request("modify") {
            $0.uuid = uuid; $0.auto = true; $0.addAttrs = Attributes([("port0", "pty"), ("label", "a")])
        }.ok)
        #expect(try d.request("modify") { $0.uuid = uuid; $0.delAttrs = ["label"]; $0.addAttrs = Attributes([("label", "b")]) }.ok)
        var def = try #require(try d.request("list") { $0.defined = true }.definitions?.first)
        #expect(def.definition == Definition(type: "mtty-2", start: .auto, attributes: Attributes([("port0", "pty"), ("label", "b")])))
        // A modification that makes the definition invalid changes nothing.
        #expect(try d.request("modify") { $0.uuid = uuid; $0.type = "mdpy-vga" }.error?.code == "invalid")
        #expect(try d.request("modify") { $0.uuid = uuid; $0.delAttrs = ["nothere"] }.error?.code == "not-found")
        def = try #require(try d.request("list") { $0.defined = true }.definitions?.first)
        #expect(def.definition.type == "mtty-2")
        #expect(try d.request("undefine") { $0.uuid = uuid }.ok)
        #expect(!FileManager.default.fileExists(atPath: "\(d.configuration.configDirectory)/\(uuid).json"))
        #expect(try d.request("undefine") { $0.uuid = uuid }.error?.code == "not-found")
        // Keeping a running instance: type and creation attributes come from it.
        let i = try d.start("mbochs-medium", attrs: [("edid_max", "1280x1024")])
        #expect(try d.request("define") { $0.uuid = i.uuid }.uuid == i.uuid)
        def = try #require(try d.request("list") { $0.defined = true }.definitions?.first)
        #expect(def.definition == Definition(type: "mbochs-medium", start: .manual, attributes: Attributes([("edid_max", "1280x1024")])))
        #expect(def.running)
        #expect(try d.list().first?.defined == true)
    }
}

@Suite("lifecycle daemon: stop, attributes, commands", .serialized)
struct DaemonInstanceTests {
    @Test("stop of an attached instance signals REQ and completes when the client leaves")
    func stopSignalsREQ() throws {
        let d = try TestDaemon()
        let i = try d.start("mtty-2")
        let c = try VFIOUserClient(path: i.socket)
        try c.negotiate()
        let req = eventfd()
        defer { close(req) }
        try c.setIRQs(index: 4, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [req])
        #expect(try d.list().first?.state == "attached")
        #expect(try d.list().first?.clientPID == getpid())
        let answer = Mutex<ControlResponse?>(nil)
        let answered = DispatchSemaphore(value: 0)
        let stopper = Thread {
            let r = try? d.stop(i.uuid)
            answer.withLock { $0 = r }
            answered.signal()
        }
        stopper.start()
        #expect(waitSignal(req, ms: 5000) == 1)          // the client is asked to release the device
        #expect(answer.withLock { $0 } == nil)            // and stop waits for it
        expectAlive(c)
        c.disconnect()                                         // the client lets go, as QEMU unplugging
        #expect(answered.wait(timeout: .now() + 20) == .success, "stop did not answer once the client left")
        let r = try #require(answer.withLock { $0 })
        #expect(r.ok && r.released == "released")
        #expect(try d.list().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: i.socket))
        #expect(try d.available()["mtty-2"] == 12)
    }

    @Test("a client that does not release in time keeps the device; --force drops it; no REQ eventfd is busy at once")
    func stopTimeoutAndForce() throws {
        let d = try TestDaemon()
        let i = try d.start("mtty-1")
        let c = try VFIOUserClient(path: i.socket)
        try c.negotiate()
        // No REQ eventfd: nothing can ask the client, so stop says so at once.
        let noReq = try d.stop(i.uuid)
        #expect(noReq.error?.code == "busy")
        #expect(noReq.error?.message.contains("registered no REQ eventfd") == true)
        let req = eventfd()
        defer { close(req) }
        try c.setIRQs(index: 4, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [req])
        let late = try d.stop(i.uuid, timeout: 0.3)
        #expect(late.error?.code == "busy" && late.error?.message.contains("still holds it after 0.3 s") == true)
        #expect(drain(req) == 1)
        expectAlive(c)
        #expect(try d.list().count == 1)
        let forced = try d.stop(i.uuid, force: true)
        #expect(forced.ok && forced.released == "dropped")
        #expect(throws: ClientError.self) { try c.deviceInfo() }
        #expect(try d.available()["mtty-1"] == 24)
        #expect(try d.stop(i.uuid).error?.code == "not-found")
    }

    @Test("attribute has never changes state; get and set keep creation, runtime and status apart")
    func attributes() throws {
        let d = try TestDaemon()
        let i = try d.start("mbochs-medium", attrs: [("label", "left"), ("edid_resolution", "1024x768")])
        let names = ["display_socket", "edid_max", "edid_resolution", "label", "state", "socket", "client_pid", "plane", "port0", "nonsense", ""]
        func snapshot() throws -> (String, [ControlResponse], [UInt8]) {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            let list = try encoder.encode(try d.request("list"))
            let gets = try names.map { n in try d.request("attribute-get") { $0.uuid = i.uuid; $0.name = n } }
            let path = d.root + "/snap"
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
            defer { close(fd) }
            let saved = try d.call({ var r = ControlRequest("migrate-save"); r.uuid = i.uuid; return r }(), descriptor: fd)
            #expect(saved.ok)
            return (String(decoding: list, as: UTF8.self), gets, Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        }
        let before = try snapshot()
        var kinds: [String: String] = [:]
        for n in names {
            let r = try d.request("attribute-has") { $0.uuid = i.uuid; $0.name = n }
            #expect(r.ok)
            kinds[n] = r.has == true ? r.kind?.rawValue : "no"
        }
        let after = try snapshot()
        #expect(before.0 == after.0 && before.1 == after.1 && before.2 == after.2)
        #expect(kinds == ["display_socket": "creation", "edid_max": "creation", "edid_resolution": "runtime", "label": "runtime",
                          "state": "status", "socket": "status", "client_pid": "status", "plane": "status",
                          "port0": "no", "nonsense": "no", "": "no"])
        #expect(before.1[0].value == i.displaySocket && before.1[1].value == "1920x1440" && before.1[2].value == "1024x768")
        #expect(before.1[3].value == "left" && before.1[4].value == "running" && before.1[6].value == "" && before.1[7].value == "disabled")
        #expect(before.1[8].error?.code == "not-found")
        // set: runtime only.
        let fixed = try d.request("attribute-set") { $0.uuid = i.uuid; $0.name = "edid_max"; $0.value = "800x600" }
        #expect(fixed.error?.code == "invalid" && fixed.error?.message.hasPrefix("edid_max is fixed when an instance is created") == true)
        #expect(try d.request("attribute-set") { $0.uuid = i.uuid; $0.name = "state"; $0.value = "x" }.error?.code == "invalid")
        #expect(try d.request("attribute-set") { $0.uuid = i.uuid; $0.name = "edid_resolution"; $0.value = "4000x3000" }.error?.code == "invalid")
        #expect(try d.request("attribute-set") { $0.uuid = i.uuid; $0.name = "edid_resolution"; $0.value = "1280x1024" }.ok)
        #expect(try d.request("attribute-set") { $0.uuid = i.uuid; $0.name = "label"; $0.value = "right" }.ok)
        #expect(try d.request("attribute-get") { $0.uuid = i.uuid; $0.name = "label" }.value == "right")
        // The guest sees the new preferred mode in the EDID.
        let c = try VFIOUserClient(path: i.socket)
        try c.negotiate()
        let blob = try c.read(region: 9, offset: UInt64(try c.read32(region: 9, offset: 0)), count: 128)
        #expect(EDIDTiming.preferred(blob) == "1280x1024")
        // While a client holds it, the device's EDID is the client's.
        #expect(try d.request("attribute-set") { $0.uuid = i.uuid; $0.name = "edid_resolution"; $0.value = "800x600" }.error?.code == "busy")
        #expect(try d.request("attribute-get") { $0.uuid = i.uuid; $0.name = "state" }.value == "attached")
        #expect(try d.request("attribute-get") { $0.uuid = i.uuid; $0.name = "client_pid" }.value == "\(getpid())")
        #expect(try d.request("reset") { $0.uuid = i.uuid }.error?.code == "busy")
        #expect(try d.request("attribute-has") { $0.uuid = "0e0f1d2c-3b4a-4958-8776-a5b4c3d2e1f0"; $0.name = "label" }.error?.code == "not-found")
    }

    @Test("reset of an idle instance puts its registers back")
    func reset() throws {
        let d = try TestDaemon()
        let i = try d.start("mtty-1")
        do {
            let c = try VFIOUserClient(path: i.socket)
            try c.negotiate()
            try c.write8(region: 0, offset: 7, 0x5a)        // scratch register
            #expect(try c.read8(region: 0, offset: 7) == 0x5a)
            #expect(leave(c, instance: i.uuid, of: d))
        }
        #expect(try d.request("reset") { $0.uuid = i.uuid }.ok)
        let c = try VFIOUserClient(path: i.socket)
        try c.negotiate()
        #expect(try c.read8(region: 0, offset: 7) == 0)
    }
}

/// `client` leaves instance `uuid` and the daemon has seen it go: once the
/// server has closed its end (`leave`), the device is released, so the
/// daemon reports no client at the first asking.
func leave(_ client: VFIOUserClient, instance uuid: String, of d: TestDaemon) -> Bool {
    leave(client) && (try? d.request("attribute-get", { $0.uuid = uuid; $0.name = "state" }).value) == "running"
}

/// The first detailed timing of an EDID block, "WxH".
enum EDIDTiming {
    static func preferred(_ edid: [UInt8]) -> String? {
        guard edid.count >= 72 else { return nil }
        let d = Array(edid[54..<72])
        let w = Int(d[2]) | Int(d[4] >> 4) << 8
        let h = Int(d[5]) | Int(d[7] >> 4) << 8
        return "\(w)x\(h)"
    }
}
