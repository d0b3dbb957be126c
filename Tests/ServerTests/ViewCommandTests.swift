import Foundation
import Glibc
import Testing
import Viewer

/// `umdev view --png` against `umdev serve`, with `umdev-bench play-guest` as the guest.
@Suite("umdev view --png")
struct ViewCommandTests {
    static func umdev(_ arguments: [String]) throws -> CommandOutcome { try runUmdev(arguments) }
    /// The scripted guest, from the benchmark tool.
    static func playGuest(_ arguments: [String]) throws -> CommandOutcome { try runUmdev(["play-guest"] + arguments, program: "umdev-bench") }

    /// A served display device, once its display socket is there too: `umdev
    /// serve` says READY=1 after every socket it serves listens.
    static func serve(_ type: String) throws -> ServerProcess {
        let server = try ServerProcess(type: type)
        #expect(access(server.path + ".display", F_OK) == 0)
        return server
    }

    static func temporaryPNG() -> String { "/tmp/umdev-view-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).png" }

    @Test("mdpy: the PNG is the pattern the guest drew, pixel for pixel")
    func mdpySnapshot() throws {
        let server = try Self.serve("mdpy-xga")
        let guest = try Self.playGuest(["--socket", server.path, "--seed", "33"])
        #expect(guest.status == 0 && guest.out.hasPrefix("ready: 1024x768 stride 4096 offset 0x0"))
        let png = Self.temporaryPNG()
        defer { unlink(png) }
        let view = try Self.umdev(["view", "--socket", server.path + ".display", "--png", png])
        #expect(view.status == 0, "\(view.err)")
        #expect(view.out == "\(png): XR24 1024x768 stride 4096, region 9\n")
        #expect(try PNG.read(png) == TestPattern.image(width: 1024, height: 768, seed: 33))
    }

    @Test("mbochs: the PNG is the pattern at a non-zero pan, read through the display socket while the VMM holds the device")
    func mbochsSnapshot() throws {
        let server = try Self.serve("mbochs-medium")
        // The guest stays connected (as QEMU would) while the viewer looks.
        let guest = Process()
        guest.executableURL = URL(fileURLWithPath: umdevExecutable("umdev-bench"))
        guest.arguments = ["play-guest", "--socket", server.path, "--mode", "800x600", "--pan", "0,640", "--seed", "44", "--hold", "20"]
        let out = Pipe()
        guest.standardOutput = out
        try guest.run()
        defer { kill(guest.processIdentifier, SIGKILL); guest.waitUntilExit() }
        let ready = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        #expect(ready.hasPrefix("ready: 800x600 stride 3200 offset 0x1f4000"))   // 640 lines of 3200 bytes: 500 pages
        let png = Self.temporaryPNG()
        defer { unlink(png) }
        let view = try Self.umdev(["view", "--socket", server.path + ".display", "--png", png])
        #expect(view.status == 0, "\(view.err)")
        #expect(view.out.hasPrefix("\(png): XR24 800x600 stride 3200, dmabuf id "))
        #expect(try PNG.read(png) == TestPattern.image(width: 800, height: 600, seed: 44))
    }

    @Test("a plane panned off a page boundary cannot be exported: a clear error")
    func unalignedPlane() throws {
        let server = try Self.serve("mbochs-small")
        #expect(try Self.playGuest(["--socket", server.path, "--mode", "640x480", "--pan", "1,0"]).status == 0)
        let view = try Self.umdev(["view", "--socket", server.path + ".display", "--png", Self.temporaryPNG()])
        #expect(view.status == 1 && view.err.contains("does not start on a page boundary"))
    }

    @Test("a disabled plane is an error with exit status 1 and no file")
    func disabledPlane() throws {
        let server = try Self.serve("mbochs-small")
        let png = Self.temporaryPNG()
        let view = try Self.umdev(["view", "--socket", server.path + ".display", "--png", png])
        #expect(view.status == 1)
        #expect(view.err.contains("the plane is disabled"))
        #expect(access(png, F_OK) != 0)
    }

    @Test("a device without a display, or a socket that is not there, is an error")
    func noDisplay() throws {
        let server = try ServerProcess(type: "mtty-1")
        let view = try Self.umdev(["view", "--socket", server.path, "--png", Self.temporaryPNG()])
        #expect(view.status == 1 && view.err.contains("has no display"))
        let gone = try Self.umdev(["view", "--socket", "/tmp/umdev-no-such-socket", "--png", Self.temporaryPNG()])
        #expect(gone.status == 1 && gone.err.contains("cannot talk to /tmp/umdev-no-such-socket"))
    }

    @Test("--wait-change waits for the guest's next picture")
    func waitChange() throws {
        let server = try Self.serve("mdpy-vga")
        let png = Self.temporaryPNG()
        defer { unlink(png) }
        let view = Process()
        view.executableURL = URL(fileURLWithPath: umdevExecutable())
        view.arguments = ["view", "--socket", server.path + ".display", "--png", png, "--wait-change", "--timeout", "20"]
        view.standardOutput = FileHandle.nullDevice
        // READY=1: the viewer has taken the gray ramp it compares with, so the guest may draw.
        let manager = try NotifySocket()
        view.environment = ProcessInfo.processInfo.environment.merging(manager.environment) { $1 }
        try view.run()
        defer { if view.isRunning { kill(view.processIdentifier, SIGKILL) } }
        try #require(manager.waitReady("umdev view --wait-change", exited: { !view.isRunning }) != nil)
        #expect(view.isRunning)   // still looking at the gray ramp: nothing has changed yet
        #expect(try Self.playGuest(["--socket", server.path, "--seed", "5"]).status == 0)
        view.waitUntilExit()
        #expect(view.terminationStatus == 0)
        #expect(try PNG.read(png) == TestPattern.image(width: 640, height: 480, seed: 5))
    }
}
