import CShim
import Foundation
import Glibc
import ServiceManager
import Synchronization
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient

/// The service manager's side, as systemd documents it: `FDStore` keeps
/// what `FDSTORE=1` sends and starts umdev with it in `LISTEN_FDS`.
private func manager() throws -> FDStore {
    try FDStore(path: "/tmp/umdev-fdstore-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock")
}

private extension FDStore {
    func start(_ arguments: [String], log: String) throws -> pid_t { try start(umdevExecutable(), arguments, stderr: log) }
}

@Suite("umdev daemon: a planned restart through the fd store", .serialized)
struct DaemonRestartTests {
    static let testUUID = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    static let mttyUUID = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a"

    /// SIGTERM with an fd store hands every instance to the manager; the
    /// next start takes them back and the clients, which never noticed,
    /// get every request answered, twice over.
    @Test func aRestartLosesNoRequestAndNoDevice() throws {
        let scratch = ScratchDirectory("umdev-restart")
        let dir = scratch.path
        let run = dir + "/run", log = dir + "/log"
        let manager = try manager()
        let arguments = ["daemon", "--run-dir", run, "--config-dir", dir + "/config", "--fd-store", "--log-level", "info"]
        var pid = try manager.start(arguments, log: log)
        defer { kill(pid, SIGKILL); waitpid(pid, nil, 0) }
        #expect(manager.waitReadies(1))
        func umdev(_ a: [String]) throws -> CommandOutcome { try runUmdev(a + ["--run-dir", run]) }
        #expect(try umdev(["start", "--uuid", Self.testUUID, "--type", "test"]).status == 0)
        #expect(try umdev(["start", "--uuid", Self.mttyUUID, "--type", "mtty-2"]).status == 0)
        let attached = try AttachedClient(path: "\(run)/\(Self.testUUID).sock")
        let serial = try VFIOUserClient(path: "\(run)/\(Self.mttyUUID).sock")
        try serial.negotiate()
        try serial.write8(region: 0, offset: 2, 0x01)      // FIFO on
        for b in Array("kept".utf8) { try serial.write8(region: 0, offset: 0, b) }
        let listed = try umdev(["list", "--dumpjson"]).out
        #expect(listed.contains("attached"))

        let streamer = RequestStreamer(attached.client)
        for round in 1...2 {
            let before = streamer.answered
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            #expect(status == 0, "restart \(round): the daemon exits 0 once the store holds everything")
            let names = Set(manager.stored.map(\.name))
            #expect(names.isSuperset(of: ["umdev-state-daemon", "umdev-state-\(Self.testUUID)", "umdev-state-\(Self.mttyUUID)"]), "\(names)")
            #expect(names.filter { $0.hasPrefix("umdev-d-") }.count >= 6, "\(names)")
            pid = try manager.start(arguments, log: log)
            #expect(manager.waitReadies(1 + round), "restart \(round)")
            streamer.waitForAnswers(100, since: before)
            // The new process keeps the same things in the store, no more.
            #expect(Set(manager.stored.map(\.name)) == names)
        }
        #expect(streamer.stop() == [])
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.components(separatedBy: "took over 2 instance(s)").count - 1 == 2, "\(text)")
        #expect(!text.contains("afresh"), "\(text)")
        #expect(text.contains("through the fd store"))
        #expect(try umdev(["list", "--dumpjson"]).out == listed)
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        var got: [UInt8] = []
        while try serial.read8(region: 0, offset: 5) & 0x01 != 0 { got.append(try serial.read8(region: 0, offset: 0)) }
        #expect(got == Array("kept".utf8))
    }

    /// `umdev serve --fd-store` the same way: SIGTERM stores the device
    /// and its client, the next start takes them back.
    @Test func serveRestartsWithItsClient() throws {
        let scratch = ScratchDirectory("umdev-restart")
        let dir = scratch.path
        let path = dir + "/mtty.sock", log = dir + "/log"
        let manager = try manager()
        let arguments = ["serve", "--type", "mtty-2", "--socket", path, "--fd-store", "--log-level", "info"]
        var pid = try manager.start(arguments, log: log)
        defer { kill(pid, SIGKILL); waitpid(pid, nil, 0) }
        #expect(manager.waitReadies(1))
        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        let intx = umdev_eventfd(0)
        defer { close(intx) }
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [intx])
        try c.write8(region: 0, offset: 7, 0x3c)
        try c.write8(region: 0, offset: 2, 0x01)
        try c.write8(region: 0, offset: 1, 0x01)
        for round in 1...2 {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            #expect(status == 0)
            #expect(access(path, F_OK) == 0, "the socket file stays for the next start")
            pid = try manager.start(arguments, log: log)
            #expect(manager.waitReadies(1 + round))
        }
        #expect(try c.read8(region: 0, offset: 7) == 0x3c)
        try c.write8(region: 0, offset: 0, 0x41)
        #expect(waitSignal(intx) == 1, "the RX interrupt reached the eventfd registered before the restarts")
        #expect(try c.read8(region: 0, offset: 0) == 0x41)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.components(separatedBy: "through the fd store").count - 1 == 2, "\(text)")
        // The state memfd, the listener, the client, the eventfd: kept for the next crash.
        let names = Set(manager.stored.map(\.name))
        #expect(names.contains("umdev-state-serve") && names.filter { $0.hasPrefix("umdev-d-") }.count == 3, "\(names)")
    }

    /// `--supervise` plays the manager where there is none: SIGHUP restarts
    /// the daemon keeping every device, a killed daemon is started again
    /// with every device (20 kills), SIGTERM stops it.
    @Test func superviseRestartsKeepingDevicesAndRevivesACrash() throws {
        let scratch = ScratchDirectory("umdev-supervise-test")
        let dir = scratch.path
        let run = dir + "/run", log = dir + "/log"
        let notify = try NotifySocket()
        var parent = try spawnChild([umdevExecutable(), "daemon", "--supervise", "--run-dir", run, "--config-dir", dir + "/config",
                                     "--log-level", "info"], environment: notify.environment, stderr: log)
        defer { if parent > 0 { kill(parent, SIGKILL); waitpid(parent, nil, 0) } }
        let supervisor = parent
        #expect(notify.waitReady("umdev daemon --supervise", exited: { waitpid(supervisor, nil, WNOHANG) != 0 }) != nil)
        func logText() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        func child() -> pid_t? {
            let text = (try? String(contentsOfFile: "/proc/\(supervisor)/task/\(supervisor)/children", encoding: .utf8)) ?? ""
            return text.split(separator: " ").first.flatMap { pid_t($0) }
        }
        func waitLog(_ needle: String, count: Int) -> Bool {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                if logText().components(separatedBy: needle).count - 1 >= count { return true }
                usleep(10_000)
            }
            return false
        }
        #expect(try runUmdev(["start", "--uuid", Self.testUUID, "--type", "test", "--run-dir", run]).status == 0)
        let attached = try AttachedClient(path: "\(run)/\(Self.testUUID).sock")
        let first = try #require(child())

        kill(supervisor, SIGHUP)
        #expect(waitLog("took over 1 instance(s)", count: 1), "\(logText())")
        #expect(child() != first)
        try attached.expectIntact()
        try attached.expectInterruptDelivered()

        // Crashes: the supervisor starts it again each time, and every instance and its client go on:
        // a test device, an mtty-2 and an mbochs-large streamed to, and the first one idle.
        let fleet = try CrashFleet(run: run)
        let kills = 20
        for round in 1...kills {
            let killed = try #require(child())
            fleet.waitForAnswers(20, since: fleet.answered)
            kill(killed, SIGKILL)
            #expect(waitLog("killed by signal 9", count: round), "\(logText())")
            #expect(waitLog("took over 4 instance(s)", count: round), "\(logText())")
            fleet.waitForAnswers(50, since: fleet.answered)
            #expect(child() != killed)
        }
        try fleet.expectIntact(unansweredAtMost: kills)
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        #expect(try runUmdev(["list", "--dumpjson", "--run-dir", run]).out.contains(Self.testUUID))

        kill(supervisor, SIGTERM)
        var status: Int32 = 0
        waitpid(supervisor, &status, 0)
        #expect(status == 0, "the supervisor exits with its child's status")
        parent = 0
        let left = (try? FileManager.default.contentsOfDirectory(atPath: run)) ?? []
        #expect(left == [], "sockets left behind: \(left)")
    }

    /// Without an fd store, SIGTERM stops every instance as before.
    @Test func withoutAStoreSIGTERMStopsAsBefore() throws {
        let scratch = ScratchDirectory("umdev-restart")
        let dir = scratch.path
        let run = dir + "/run", log = dir + "/log"
        let manager = try manager()
        let pid = try manager.start(["daemon", "--run-dir", run, "--config-dir", dir + "/config", "--log-level", "info"], log: log)
        defer { kill(pid, SIGKILL); waitpid(pid, nil, 0) }
        #expect(manager.waitReadies(1))
        #expect(try runUmdev(["start", "--uuid", Self.testUUID, "--type", "test", "--run-dir", run]).status == 0)
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(status == 0)
        #expect(manager.stored.isEmpty)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: run)) ?? []
        #expect(left == [], "sockets left behind: \(left)")
    }
}
