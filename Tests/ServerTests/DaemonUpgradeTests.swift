import CShim
import Foundation
import Glibc
import Lifecycle
import MBochs
import Synchronization
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient
import Viewer

/// `umdev daemon` as an `UpgradableProcess`, its run directory in the scratch one.
private final class UpgradableDaemon: UpgradableProcess {
    let run: String

    init() throws {
        let scratch = ScratchDirectory("umdev-dupgrade")
        run = scratch.path + "/run"
        try super.init(scratch, arguments: ["daemon", "--run-dir", run, "--config-dir", scratch.path + "/config", "--budget", "mtty=8",
                                            "--log-level", "info"], what: "umdev daemon")
    }

    /// A lifecycle command against this daemon.
    func umdev(_ arguments: [String]) throws -> CommandOutcome {
        manager.drain()
        defer { manager.drain() }
        return try runUmdev(arguments + ["--run-dir", run])
    }

    func socket(_ uuid: String) -> String { "\(run)/\(uuid).sock" }
}

@Suite("live upgrade of umdev daemon (umdev upgrade, SIGUSR2)", .serialized)
struct DaemonUpgradeTests {
    static let testUUID = "0b5e7d2c-4a1f-4c3e-9d8b-7a6f5e4d3c2b"
    static let mttyUUID = "9c8d7e6f-5a4b-4c3d-8e2f-1a0b9c8d7e6f"
    static let definedUUID = "4f3e2d1c-0b9a-4877-a655-443322110099"

    /// Twenty `umdev upgrade`s while a client streams requests to one
    /// instance: every request is answered, and the instances (UUIDs,
    /// attributes, state, clients), budgets and definitions are what they
    /// were; the devices' registers, DMA window, mapped BAR, FIFO and
    /// interrupts work as before.
    @Test func twentyUpgradesMoveEveryInstanceAndTheBookkeeping() throws {
        let daemon = try UpgradableDaemon()
        #expect(try daemon.umdev(["start", "--uuid", Self.testUUID, "--type", "test"]).status == 0)
        #expect(try daemon.umdev(["start", "--uuid", Self.mttyUUID, "--type", "mtty-2", "--attr", "label=console"]).status == 0)
        #expect(try daemon.umdev(["define", "--uuid", Self.testUUID]).status == 0)
        #expect(try daemon.umdev(["define", "--uuid", Self.definedUUID, "--type", "mtty-1", "--auto"]).status == 0)
        #expect(try daemon.umdev(["attribute", "set", "label", "renamed", "--uuid", Self.mttyUUID]).status == 0)

        let attached = try AttachedClient(path: daemon.socket(Self.testUUID))
        let serial = try VFIOUserClient(path: daemon.socket(Self.mttyUUID))
        try serial.negotiate()
        let intx = umdev_eventfd(0)
        defer { close(intx) }
        try serial.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [intx])
        try serial.write8(region: 0, offset: 7, 0x5a)      // scratch
        try serial.write8(region: 0, offset: 2, 0x01)      // FIFO on
        try serial.write8(region: 0, offset: 1, 0x01)      // RX data interrupts
        for b in Array("kept".utf8) { try serial.write8(region: 0, offset: 0, b) }
        #expect(waitSignal(intx) == 1)

        let listed = try daemon.umdev(["list", "--dumpjson"]).out
        let types = try daemon.umdev(["types", "--dumpjson"]).out
        let defined = try daemon.umdev(["list", "--defined", "--dumpjson"]).out
        #expect(listed.contains("attached") && listed.contains("console"))

        let streamer = RequestStreamer(attached.client)
        for round in 0..<20 {
            let before = streamer.answered
            let up = try daemon.umdev(["upgrade"])
            #expect(up.status == 0, "upgrade \(round): \(up.err)")
            #expect(up.out.contains("(pid \(daemon.pid))") && up.out.contains("2 instance(s) handed over"), "\(up.out)")
            streamer.waitForAnswers(10, since: before)
        }
        #expect(streamer.stop() == [])
        #expect(streamer.answered > 200)
        #expect(daemon.isRunning)
        #expect(daemon.logText().components(separatedBy: "took over 2 instance(s)").count - 1 == 20)

        // The bookkeeping: the same instances, budgets and definitions.
        #expect(try daemon.umdev(["list", "--dumpjson"]).out == listed)
        #expect(try daemon.umdev(["types", "--dumpjson"]).out == types)
        #expect(try daemon.umdev(["list", "--defined", "--dumpjson"]).out == defined)
        #expect(try daemon.umdev(["attribute", "get", "label", "--uuid", Self.mttyUUID]).out == "renamed\n")
        // A second instance under a running UUID is still refused, and the mtty budget still counts both ports.
        #expect(try daemon.umdev(["start", "--uuid", Self.mttyUUID, "--type", "mtty-1"]).status != 0)

        // The devices.
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        #expect(try serial.read8(region: 0, offset: 7) == 0x5a)
        var got: [UInt8] = []
        while try serial.read8(region: 0, offset: 5) & 0x01 != 0 { got.append(try serial.read8(region: 0, offset: 0)) }
        #expect(got == Array("kept".utf8))
        try serial.setIRQs(index: 0, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        _ = drain(intx)
        try serial.write8(region: 0, offset: 0, 0x21)
        #expect(waitSignal(intx) == 1, "the RX interrupt reached the eventfd registered before the upgrades")

        // Lifecycle commands work on the new process: stop, start, and SIGTERM cleans up.
        #expect(try daemon.umdev(["stop", "--uuid", Self.mttyUUID, "--force"]).status == 0)
        #expect(try daemon.umdev(["start", "--uuid", Self.definedUUID]).status == 0)
        kill(daemon.pid, SIGTERM)
        let deadline = Date().addingTimeInterval(20)
        while daemon.isRunning && Date() < deadline { usleep(10_000) }
        #expect(!daemon.isRunning)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: daemon.run)) ?? []
        #expect(left == [], "sockets left behind: \(left)")
    }

    /// A display instance moves too: its VRAM, plane id and display
    /// socket; a viewer that connects again sees the picture.
    @Test func anMBochsInstanceKeepsItsPictureAndItsDisplaySocket() throws {
        let daemon = try UpgradableDaemon()
        let uuid = "7d6c5b4a-3928-4716-8504-f3e2d1c0b9a8"
        #expect(try daemon.umdev(["start", "--uuid", uuid, "--type", "mbochs-small"]).status == 0)
        let vmm = try VFIOUserClient(path: daemon.socket(uuid))
        try vmm.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
        try setBochsMode(vmm, width: 640, height: 480, vram: 4 << 20)
        let bar0 = try DisplayServerTests.Mapping(vmm, region: MBochs.vramRegion)
        TestPattern.drawXRGB(into: bar0.base, width: 640, height: 480, stride: 2560, seed: 5)
        let before = try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf)
        let listed = try daemon.umdev(["list", "--dumpjson"]).out
        for _ in 0..<3 {
            let up = try daemon.umdev(["upgrade"])
            #expect(up.status == 0 && up.out.contains("1 instance(s) handed over"), "\(up.out)\(up.err)")
        }
        #expect(try daemon.umdev(["list", "--dumpjson"]).out == listed)
        #expect(try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf) == before)
        let viewer = try VFIOUserClient(path: "\(daemon.run)/\(uuid).display")
        try viewer.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
        let watcher = ScreenWatcher(mapping: try PlaneMapping(client: viewer))
        let update = try watcher.poll()
        #expect(update.frame?.id == before.id)
        let shown = update.pixels.map { PixelFormat.rgb(pixels: $0, fourcc: before.drmFormat, width: 640, height: 480, stride: update.stride) }
        #expect(shown == TestPattern.image(width: 640, height: 480, seed: 5))
        withExtendedLifetime(watcher) {}
        kill(daemon.pid, SIGTERM)
        let deadline = Date().addingTimeInterval(20)
        while daemon.isRunning && Date() < deadline { usleep(10_000) }
        let left = (try? FileManager.default.contentsOfDirectory(atPath: daemon.run)) ?? []
        #expect(left == [], "sockets left behind: \(left)")
    }

    /// Each way an upgrade can fail: `umdev upgrade` exits 1 with the
    /// reason, the log says it, and every instance serves on as before.
    @Test func aFailedUpgradeChangesNothing() throws {
        let daemon = try UpgradableDaemon()
        #expect(try daemon.umdev(["start", "--uuid", Self.testUUID, "--type", "test"]).status == 0)
        let attached = try AttachedClient(path: daemon.socket(Self.testUUID))

        func failing(_ arguments: [String] = [], _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let up = try daemon.umdev(["upgrade"] + arguments)
            #expect(up.status != 0, sourceLocation: sourceLocation)
            #expect(up.err.contains(reason), "\(up.err)", sourceLocation: sourceLocation)
            #expect(daemon.logText().contains(reason), sourceLocation: sourceLocation)
            try attached.expectIntact(sourceLocation: sourceLocation)
        }
        try failing(["--binary", daemon.directory + "/nowhere"], "No such file or directory")
        unlink(daemon.binary)
        try failing([], "No such file or directory")
        daemon.replaceBinary(withScript: "echo 'this binary refuses' >&2; exit 1")
        try failing([], "exited with status 1 while reading the handover: this binary refuses")
        daemon.replaceBinary(withScript: "kill -SEGV $$")
        try failing([], "killed by signal 11")
        daemon.replaceBinary(withScript: """
            printf 'c\\000' | dd of=/proc/self/fd/$UMDEV_HANDOVER bs=1 seek=4 conv=notrunc 2>/dev/null
            exec \(umdevExecutable()) "$@"
            """)
        try failing([], "version 99")
        daemon.restoreBinary()

        // A device stopped for a migration stays stopped across the upgrade.
        try attached.client.setMigrationState(.stop)
        let during = try daemon.umdev(["upgrade"])
        #expect(during.status == 0, "\(during.err)")
        #expect(try attached.client.migrationState() == .stop)
        try attached.client.setMigrationState(.running)
        try attached.expectIntact()
        // An mtty on a pty moves with the rest.
        let pty = "7d6c5b4a-3928-4716-a504-f3e2d1c0b9a8"
        #expect(try daemon.umdev(["start", "--uuid", pty, "--type", "mtty-1", "--attr", "port0=pty"]).status == 0)

        // A control request carries no relative binary.
        var request = ControlRequest("upgrade")
        request.path = "umdev"
        let answer = try ControlWire.call(request, path: daemon.run + "/control.sock")
        #expect(!answer.ok && answer.error?.code == "invalid")

        // SIGUSR2 upgrades as `umdev upgrade` does.
        kill(daemon.pid, SIGUSR2)
        let deadline = Date().addingTimeInterval(30)
        while !daemon.logText().contains("took over 2 instance(s)") && Date() < deadline { usleep(20_000) }
        #expect(daemon.logText().contains("took over 2 instance(s)"))
        #expect(daemon.logText().components(separatedBy: "took over").count - 1 == 2)
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        #expect(daemon.isRunning)
    }
}
