import Foundation
import Glibc
import Testing

/// `umdev daemon` as a process, and the lifecycle commands as a user runs them.
@Suite("umdev daemon and its commands", .serialized)
struct DaemonCLITests {
    func umdev(_ arguments: [String]) throws -> CommandOutcome { try runUmdev(arguments) }

    @Test("start, list, attribute, compat, stop and errors, against a daemon process; SIGTERM cleans up")
    func walkthrough() throws {
        let root = "/tmp/umdev-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = try? FileManager.default.removeItem(atPath: root) }
        let run = ["--run-dir", root + "/run"]
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: umdevExecutable())
        daemon.arguments = ["daemon", "--config-dir", root + "/config", "--budget", "mtty=4", "--log-level", "warning"] + run
        // The test is the service manager: the daemon says READY=1 once its control socket listens.
        let manager = try NotifySocket()
        daemon.environment = ProcessInfo.processInfo.environment.merging(manager.environment) { $1 }
        try daemon.run()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        try #require(manager.waitReady("umdev daemon", exited: { !daemon.isRunning }) != nil)
        var st = stat()
        #expect(stat(root + "/run/control.sock", &st) == 0)

        // types: mdevctl's shape, with the configured budget.
        let types = try umdev(["types", "--dumpjson"] + run)
        #expect(types.status == 0)
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(types.out.utf8)) as? [[String: [[String: [String: Any]]]]])
        let entries = try #require(parsed.first?["umdev"])
        let mtty2 = try #require(entries.first { $0["mtty-2"] != nil }?["mtty-2"])
        #expect(mtty2["available_instances"] as? Int == 2 && mtty2["device_api"] as? String == "vfio-pci" && mtty2["name"] as? String == "Dual port serial")
        #expect(mtty2["description"] == nil)

        // start prints the UUID, the socket and the QEMU option.
        let uuid = "5e1d6a2b-8c3f-4e7a-9b0d-1c2e3f4a5b6c"
        let started = try umdev(["start", "--uuid", uuid, "--type", "mtty-2", "--attr", "label=console"] + run)
        #expect(started.status == 0)
        let socket = root + "/run/\(uuid).sock"
        #expect(started.out.contains("uuid:    \(uuid)\n") && started.out.contains("socket:  \(socket)\n"))
        #expect(started.out.contains("qemu:    -device '{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"\(socket)\"}}'"))
        #expect(stat(socket, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let list = try umdev(["list"] + run)
        #expect(list.status == 0 && list.out == "\(uuid)  mtty-2  running  \(socket)\n")
        let json = try umdev(["list", "--dumpjson"] + run)
        let listed = try #require(try JSONSerialization.jsonObject(with: Data(json.out.utf8)) as? [[String: [[String: [String: Any]]]]])
        let entry = try #require(listed.first?["umdev"]?.first?[uuid])
        #expect(entry["mdev_type"] as? String == "mtty-2" && (entry["attrs"] as? [[String: String]]) == [["label": "console"]])
        #expect(try umdev(["attribute", "get", "label", "--uuid", uuid] + run).out == "console\n")
        #expect(try umdev(["attribute", "has", "port1", "--uuid", uuid] + run).out == "yes (creation)\n")

        // Errors: non-zero status and one line saying why.
        let full = try umdev(["start", "--type", "mtty-2"] + run)
        #expect(full.status == 0)
        let over = try umdev(["start", "--type", "mtty-1"] + run)
        #expect(over.status == 1)
        #expect(over.err == "Error: no room for mtty-1: it needs 1 of the mtty budget's 4 ports, and 0 are left\n")
        let missing = try umdev(["stop", "--uuid", "00000000-0000-0000-0000-000000000000"] + run)
        #expect(missing.status == 1 && missing.err == "Error: no instance 00000000-0000-0000-0000-000000000000 is running\n")
        let fixed = try umdev(["attribute", "set", "port0", "pty", "--uuid", uuid] + run)
        #expect(fixed.status == 1 && fixed.err.hasPrefix("Error: port0 is fixed when an instance is created"))
        let nodaemon = try umdev(["list", "--run-dir", root + "/elsewhere"])
        #expect(nodaemon.status == 1 && nodaemon.err.hasPrefix("Error: no umdev daemon at \(root)/elsewhere/control.sock"))

        // compat: 0 when compatible, 2 when not.
        #expect(try umdev(["compat", "--from", uuid, "--to", "mtty-2"] + run).status == 0)
        let no = try umdev(["compat", "--from", uuid, "--to", "mtty-1"] + run)
        #expect(no.status == 2 && no.out == "incompatible: ports differs: the state has 2, this device 1\n")
        let state = root + "/state"
        #expect(try umdev(["migrate-save", "--uuid", uuid, "--out", state] + run).status == 0)
        #expect(try umdev(["compat", "--from", state, "--to", uuid] + run).status == 0)
        #expect(try umdev(["migrate-load", "--uuid", uuid, "--in", state] + run).status == 0)

        let stopped = try umdev(["stop", "--uuid", uuid] + run)
        #expect(stopped.status == 0 && stopped.out == "\(uuid): stopped\n")
        #expect(stat(socket, &st) != 0)

        // SIGTERM: every instance stops, every socket goes, the status is 0.
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/run").isEmpty)
    }
}
