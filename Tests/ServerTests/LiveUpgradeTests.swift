import CShim
import Descriptors
import Foundation
import Glibc
import Synchronization
import SystemPackage
import MBochs
import PCI
import TestDevice
import UnixSocket
import Testing
import VFIOUser
import VFIOUserClient
import Viewer
import VFIOUserServer

/// `umdev serve` as an `UpgradableProcess`, its socket in the scratch directory.
private final class UpgradableServer: UpgradableProcess {
    let path: String

    /// `connected`: serve this socket as descriptor 3 (`--fd 3`) instead of a listening path.
    init(type: String, extraArguments: [String] = [], connected: Int32? = nil) throws {
        let scratch = ScratchDirectory("umdev-upgrade")
        path = scratch.path + "/device.sock"
        let place = connected == nil ? ["--socket", path] : ["--fd", "3"]
        try super.init(scratch, arguments: ["serve", "--type", type] + place + ["--log-level", "info"] + extraArguments,
                       fd3: connected, what: "umdev serve --type \(type)")
    }

    /// Sends SIGUSR2 and waits for the new process to say READY=1.
    func upgrade(sourceLocation: SourceLocation = #_sourceLocation) {
        kill(pid, SIGUSR2)
        let pid = self.pid
        if manager.waitReady("the upgraded umdev", exited: { waitpid(pid, nil, WNOHANG) != 0 }, sourceLocation: sourceLocation) == nil {
            Issue.record("the server's log:\n\(logText())", sourceLocation: sourceLocation)
        }
    }

    /// Sends SIGUSR2 and waits until the log says the upgrade failed
    /// (`marker`); returns that line.
    func failedUpgrade(marker: String = "upgrade failed", sourceLocation: SourceLocation = #_sourceLocation) -> String? {
        let before = logText().components(separatedBy: marker).count
        kill(pid, SIGUSR2)
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let text = logText()
            if text.components(separatedBy: marker).count > before {
                return text.split(separator: "\n").last { $0.contains(marker) }.map(String.init)
            }
            // The log is a file: polled, as a person tailing it would.
            usleep(20_000)
        }
        Issue.record("no '\(marker)' line in the log within 30 s; the log:\n\(logText())", sourceLocation: sourceLocation)
        return nil
    }

}

/// A thread reading the test device's scratch register (0xfeedf00d, as
/// `AttachedClient` sets it) back to back, counting the answers and
/// keeping every failure: what a busy VMM sees while the server behind its
/// socket is replaced.
final class RequestStreamer: @unchecked Sendable {
    // @unchecked: the counters are atomic, the failures behind a Mutex; the thread is only joined.
    private let stopping = Atomic<Bool>(false)
    private let count = Atomic<Int>(0)
    private let failed = Mutex<[String]>([])
    private var thread: Thread?

    init(_ client: VFIOUserClient) {
        nonisolated(unsafe) let c = client
        let t = Thread { [self] in
            while !stopping.load(ordering: .relaxed) {
                do {
                    let v = try c.read32(region: 0, offset: TestDevice.Register.scratch)
                    if v != 0xfeed_f00d { failed.withLock { $0.append("read \(v)") } }
                    count.add(1, ordering: .relaxed)
                } catch {
                    failed.withLock { $0.append("\(error)") }
                    return
                }
            }
        }
        thread = t
        t.start()
    }

    var answered: Int { count.load(ordering: .relaxed) }
    var failures: [String] { failed.withLock { $0 } }

    /// Waits until `n` more requests than `since` were answered (or one failed, or 10 s passed).
    func waitForAnswers(_ n: Int, since: Int) {
        let deadline = Date().addingTimeInterval(10)
        while answered < since + n && Date() < deadline && failures.isEmpty { usleep(1000) }
    }

    /// Stops the thread and returns the failures.
    func stop() -> [String] {
        stopping.store(true, ordering: .relaxed)
        while let t = thread, !t.isFinished { usleep(1000) }
        return failures
    }
}

/// A client's state the test device keeps: a scratch register, a DMA
/// window over the client's memfd, BAR1 mapped from the region's memfd,
/// and INTx wired to an eventfd.
final class AttachedClient {
    let client: VFIOUserClient
    let ramFD: Int32
    let ram: UnsafeMutableRawPointer
    let bar1: UnsafeMutableRawPointer
    let intx: Int32
    let bar1Info: RegionInfo

    init(path: String) throws {
        client = try VFIOUserClient(path: path)
        try client.negotiate()
        try client.write32(region: 0, offset: TestDevice.Register.scratch, 0xfeed_f00d)
        ramFD = umdev_memfd("guest-ram")
        ftruncate(ramFD, 1 << 20)
        ram = try #require(mmap(nil, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, ramFD, 0))
        for i in 0..<64 { ram.storeBytes(of: UInt8(i ^ 0x5a), toByteOffset: 0x200 + i, as: UInt8.self) }
        try client.dmaMap(address: 0x10_0000, size: 0x1_0000, fd: ramFD)
        bar1Info = try client.regionInfo(1, argsz: 512)
        try #require(bar1Info.fd >= 0, "BAR1 comes with its memory")
        bar1 = try #require(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, bar1Info.fd, off_t(bar1Info.offset)))
        for i in 0..<256 { bar1.storeBytes(of: UInt8(truncatingIfNeeded: i * 7), toByteOffset: i, as: UInt8.self) }
        intx = umdev_eventfd(0)
        try client.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [intx])
    }

    deinit {
        munmap(ram, 1 << 20)
        munmap(bar1, 4096)
        close(ramFD)
        close(intx)
    }

    /// Everything set up in `init` reads as it was, through the server.
    func expectIntact(sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try client.read32(region: 0, offset: TestDevice.Register.scratch) == 0xfeed_f00d, sourceLocation: sourceLocation)
        // The device's DMA engine copies from the window into its buffer.
        try client.write32(region: 0, offset: TestDevice.Register.dmaAddress, 0x10_0200)
        try client.write32(region: 0, offset: TestDevice.Register.dmaAddress + 4, 0)
        try client.write32(region: 0, offset: TestDevice.Register.dmaLength, 64)
        try client.write32(region: 0, offset: TestDevice.Register.dmaCommand, 1)
        #expect(try client.read32(region: 0, offset: TestDevice.Register.dmaStatus) == 0, sourceLocation: sourceLocation)
        #expect(try client.read(region: 0, offset: TestDevice.Register.dmaBuffer, count: 64) == (0..<64).map { UInt8($0 ^ 0x5a) },
                sourceLocation: sourceLocation)
        // BAR1: what the client wrote through its mapping is what the server reads.
        #expect(try client.read(region: 1, offset: 0, count: 256) == (0..<256).map { UInt8(truncatingIfNeeded: $0 * 7) },
                sourceLocation: sourceLocation)
        // And a write through the server lands in the client's mapping: the same memory.
        try client.write32(region: 1, offset: 0x800, 0x1234_5678)
        #expect(bar1.load(fromByteOffset: 0x800, as: UInt32.self) == 0x1234_5678, sourceLocation: sourceLocation)
    }

    /// The doorbell raises INTx; it reaches the eventfd given before any upgrade.
    func expectInterruptDelivered(sourceLocation: SourceLocation = #_sourceLocation) throws {
        var counter: UInt64 = 0
        _ = read(intx, &counter, 8) // nothing, or an earlier edge
        try client.write32(region: 0, offset: TestDevice.Register.status, 1)   // clear IS
        try client.setIRQs(index: 0, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        try client.write32(region: 0, offset: TestDevice.Register.doorbell, 1)
        #expect(pollFor(intx, seconds: 10) & Int16(POLLIN) != 0, "INTx did not reach the eventfd", sourceLocation: sourceLocation)
    }
}

@Suite("live upgrade of umdev serve (SIGUSR2)", .serialized)
struct LiveUpgradeTests {
    @Test func aClientStreamingRequestsSeesTwentyUpgradesAsNothing() throws {
        let server = try UpgradableServer(type: "test")
        let attached = try AttachedClient(path: server.path)
        try attached.expectInterruptDelivered()
        let streamer = RequestStreamer(attached.client)
        for _ in 0..<20 {
            let before = streamer.answered
            server.upgrade()
            // Requests keep being answered after each upgrade.
            streamer.waitForAnswers(10, since: before)
        }
        #expect(streamer.stop() == [])
        #expect(streamer.answered > 200)
        #expect(server.isRunning)
        #expect(server.logText().components(separatedBy: "took over test").count - 1 == 20)
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
    }

    /// mtty-2: registers, bytes waiting in a receive FIFO, a pending
    /// interrupt and the INTx eventfd all outlive three upgrades; an RX
    /// interrupt raised after them reaches the eventfd given before.
    @Test func mttyKeepsItsFIFOAndItsInterruptLine() throws {
        let server = try UpgradableServer(type: "mtty-2")
        let c = try VFIOUserClient(path: server.path)
        try c.negotiate()
        let intx = umdev_eventfd(0)
        defer { close(intx) }
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [intx])
        try c.write8(region: 0, offset: 7, 0x5a)          // scratch
        try c.write8(region: 1, offset: 3, 0x03)          // port 1: 8N1
        try c.write8(region: 0, offset: 2, 0x01)          // FIFO on
        try c.write8(region: 0, offset: 1, 0x01)          // RX data interrupts
        for b in Array("held".utf8) { try c.write8(region: 0, offset: 0, b) }   // loops back into the RX FIFO
        #expect(waitSignal(intx) == 1)                    // RX data: INTx fired, now automasked
        for _ in 0..<3 { server.upgrade() }
        #expect(try c.read8(region: 0, offset: 7) == 0x5a)
        #expect(try c.read8(region: 1, offset: 3) == 0x03)
        #expect(try c.read8(region: 0, offset: 1) == 0x01)
        // The bytes that waited in the FIFO across the upgrades, in order.
        var got: [UInt8] = []
        while try c.read8(region: 0, offset: 5) & 0x01 != 0 { got.append(try c.read8(region: 0, offset: 0)) }
        #expect(got == Array("held".utf8))
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, count: 1)
        _ = drain(intx)
        try c.write8(region: 0, offset: 0, 0x21)          // a new byte after the upgrades
        #expect(waitSignal(intx) == 1, "the RX interrupt reached the eventfd registered before the upgrades")
        #expect(try c.read8(region: 0, offset: 0) == 0x21)
    }

    /// A client on a connected socket the server was given (`--fd`) is
    /// handed over as well, and the server still ends when it leaves.
    @Test func aConnectedSocketGivenWithFdMovesToo() throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let server = try UpgradableServer(type: "test", connected: pair[1])
        close(pair[1])
        let c = VFIOUserClient(connected: OwnedDescriptor(adopting: FileDescriptor(rawValue: pair[0])))
        try c.negotiate()
        try c.write32(region: 0, offset: TestDevice.Register.scratch, 0xabcd_0123)
        server.upgrade()
        server.upgrade()
        #expect(try c.read32(region: 0, offset: TestDevice.Register.scratch) == 0xabcd_0123)
        // VERSION was negotiated before: a second one is refused, by the new process.
        #expect(throws: ClientError.remote(EINVAL)) { try c.negotiate() }
        c.disconnect()
        let deadline = Date().addingTimeInterval(20)
        while server.isRunning && Date() < deadline { usleep(10_000) }
        #expect(!server.isRunning, "the server ends when its only client leaves")
    }

    /// An mbochs keeps its VRAM (the very memory the VMM mapped), its
    /// plane and the plane's id; its display socket stays, and a viewer
    /// that reconnects sees the same picture.
    @Test func anMBochsKeepsItsPictureItsPlaneIDsAndItsDisplaySocket() throws {
        let server = try UpgradableServer(type: "mbochs-medium")
        let vmm = try VFIOUserClient(path: server.path)
        try vmm.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
        // Two layouts (ids 1 and 2), back on the first one.
        try setBochsMode(vmm, width: 800, height: 600)
        try setBochsMode(vmm, width: 1024, height: 768)
        try setBochsMode(vmm, width: 800, height: 600)
        let bar0 = try DisplayServerTests.Mapping(vmm, region: MBochs.vramRegion)
        TestPattern.drawXRGB(into: bar0.base, width: 800, height: 600, stride: 3200, seed: 9)
        let before = try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf)
        #expect(before.id == 1 && before.width == 800)
        let display = server.path + ".display"
        let viewer = ScreenWatcher(mapping: try PlaneMapping(client: try connectDisplay(display)))
        #expect(try viewer.poll().frame?.id == 1)
        for _ in 0..<3 { server.upgrade() }
        #expect(try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf) == before, "the same plane, with the same id")
        // The buffer the VMM asked for by id before is still there under that id.
        let buffer = try vmm.dmabuf(id: before.id)
        #expect(buffer.offset == 0 && buffer.size == 3200 * 600)
        // The same memory: what the server writes shows in the mapping made before.
        try vmm.write32(region: UInt32(MBochs.vramRegion), offset: 3200 * 599 + 4 * 799, 0x00ab_cdef)
        #expect(bar0.base.load(fromByteOffset: 3200 * 599 + 4 * 799, as: UInt32.self) == 0x00ab_cdef)
        bar0.base.storeBytes(of: TestPattern.rgb(x: 799, y: 599, width: 800, height: 600, seed: 9), toByteOffset: 3200 * 599 + 4 * 799, as: UInt32.self)
        // A layout seen before keeps its id; a new one gets an id never handed out.
        try setBochsMode(vmm, width: 1024, height: 768)
        #expect(try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf).id == 2)
        try setBochsMode(vmm, width: 640, height: 480)
        #expect(try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf).id == 3)
        try setBochsMode(vmm, width: 800, height: 600)
        // The old viewer's connection ended with the old process; connecting again shows the picture.
        #expect(throws: (any Error).self) { _ = try viewer.poll() }
        let again = ScreenWatcher(mapping: try PlaneMapping(client: try connectDisplay(display)))
        let update = try again.poll()
        #expect(update.frame?.id == 1 && update.width == 800 && update.height == 600)
        let shown = update.pixels.map { PixelFormat.rgb(pixels: $0, fourcc: DRMFormat.xrgb8888, width: 800, height: 600, stride: update.stride) }
        #expect(shown == TestPattern.image(width: 800, height: 600, seed: 9))
        withExtendedLifetime(again) {}
        #expect(server.logText().contains("took over mbochs-medium"))
    }

    /// An mdpy's framebuffer is the guest's picture: the new process must
    /// not paint its start-up gradient over it.
    @Test func anMDPYKeepsItsFramebuffer() throws {
        let server = try UpgradableServer(type: "mdpy-vga", extraArguments: ["--no-display-socket"])
        let vmm = try VFIOUserClient(path: server.path)
        try vmm.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
        let fb = try DisplayServerTests.Mapping(vmm, region: 0)
        TestPattern.drawXRGB(into: fb.base, width: 640, height: 480, stride: 2560, seed: 3)
        let before = try vmm.queryPlane(flags: VFIO.gfxPlaneRegion)
        server.upgrade()
        #expect(try vmm.queryPlane(flags: VFIO.gfxPlaneRegion) == before)
        #expect(PixelFormat.rgb(pixels: fb.base, fourcc: DRMFormat.xrgb8888, width: 640, height: 480, stride: 2560)
                == TestPattern.image(width: 640, height: 480, seed: 3))
        #expect(try vmm.read32(region: 0, offset: 2560 * 100 + 40) == TestPattern.rgb(x: 10, y: 100, width: 640, height: 480, seed: 3), "the server reads the same memory")
    }

    /// A migration under way goes on in the new process: a client halfway
    /// through reading a STOP_COPY stream reads the rest, and one halfway
    /// through writing a stream into RESUMING writes the rest, and the
    /// device takes it.
    @Test func aMigrationUnderWayGoesOnAcrossTheUpgrade() throws {
        let server = try UpgradableServer(type: "test")
        let c = try VFIOUserClient(path: server.path)
        try c.negotiate()
        try c.write32(region: 0, offset: TestDevice.Register.scratch, 0x1357_9bdf)
        try c.setMigrationState(.stopCopy)
        let head = try c.readMigrationChunk(24)
        #expect(head.count == 24)
        server.upgrade()
        #expect(try c.migrationState() == .stopCopy)
        let stream = head + (try c.readMigrationData(chunk: 64))
        #expect(throws: Never.self) { try MigrationMachine.unwrap(stream) }
        try c.setMigrationState(.running)
        #expect(try c.read32(region: 0, offset: TestDevice.Register.scratch) == 0x1357_9bdf)

        // Now resume that stream after changing the register, with an upgrade halfway through.
        try c.write32(region: 0, offset: TestDevice.Register.scratch, 0)
        try c.setMigrationState(.resuming)
        let half = stream.count / 2
        try c.writeMigrationData(Array(stream[..<half]), chunk: 32)
        server.upgrade()
        #expect(try c.migrationState() == .resuming)
        try c.writeMigrationData(Array(stream[half...]), chunk: 32)
        try c.setMigrationState(.running)
        #expect(try c.read32(region: 0, offset: TestDevice.Register.scratch) == 0x1357_9bdf, "the device took the stream written across the upgrade")
    }

    /// An mtty's host lines move with it: a terminal on the pty (as
    /// `screen` holds it) and a peer on the unix-socket port stay attached
    /// and carry bytes both ways after the upgrades.
    @Test func mttyHostLinesKeepTheirPeers() throws {
        let socketPath = "/tmp/umdev-line-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(socketPath) }
        let server = try UpgradableServer(type: "mtty-2", extraArguments: ["--serial", "pty", "--serial", "unix:\(socketPath)"])
        let line0 = try #require(server.logText().split(separator: "\n").first { $0.contains("port 0: /dev/pts/") })
        let pts = String(line0[line0.range(of: "/dev/pts/")!.lowerBound...].prefix { !$0.isWhitespace })
        let c = try VFIOUserClient(path: server.path)
        try c.negotiate()
        let guest = Guest8250(c)
        try guest.startup(0)
        try guest.startup(1)
        let terminal = open(pts, O_RDWR | O_NOCTTY | O_NONBLOCK)
        try #require(terminal >= 0)
        defer { close(terminal) }
        _ = umdev_make_raw(terminal)
        let peer = try UnixSocket.connect(path: socketPath).release().rawValue
        defer { close(peer) }
        _ = fcntl(peer, F_SETFL, fcntl(peer, F_GETFL) | O_NONBLOCK)

        func exchange(_ tag: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            for (port, fd) in [(UInt32(0), terminal), (UInt32(1), peer)] {
                let out = Array("\(tag) from port \(port)".utf8)
                for b in out { try guest.outb(port, 0, b) }
                var got: [UInt8] = []
                while got.count < out.count, pollFor(fd, seconds: 20) & Int16(POLLIN) != 0 {
                    var buf = [UInt8](repeating: 0, count: 256)
                    let n = read(fd, &buf, buf.count)
                    if n > 0 { got += buf[0..<n] } else if n == 0 || errno != EAGAIN { break }
                }
                #expect(got == out, "guest to host on port \(port)", sourceLocation: sourceLocation)
                let back = Array("\(tag) to port \(port)".utf8)
                #expect(write(fd, back, back.count) == back.count, sourceLocation: sourceLocation)
                var rx: [UInt8] = []
                let deadline = Date().addingTimeInterval(20)
                while rx.count < back.count && Date() < deadline {
                    if try guest.inb(port, 5) & 0x01 != 0 { rx.append(try guest.inb(port, 0)) } else { usleep(1000) }
                }
                #expect(rx == back, "host to guest on port \(port)", sourceLocation: sourceLocation)
            }
        }
        try exchange("before")
        for _ in 0..<3 { server.upgrade() }
        try exchange("after")
        // Each process says where the lines are: the same places.
        #expect(server.logText().components(separatedBy: "port 1: \(socketPath)").count - 1 == 4)
        #expect(server.logText().components(separatedBy: "port 0: \(pts)").count - 1 == 4)
    }

    /// Each way an upgrade can fail leaves the old process serving, the
    /// client unaware, and the reason in the log.
    @Test func aFailedUpgradeChangesNothing() throws {
        let server = try UpgradableServer(type: "test")
        let attached = try AttachedClient(path: server.path)

        unlink(server.binary)
        let missing = server.failedUpgrade()
        #expect(missing?.contains("No such file or directory") == true, "\(missing ?? "")")
        try attached.expectIntact()

        server.replaceBinary(withScript: "echo 'this binary refuses' >&2; exit 1")
        let exits = server.failedUpgrade()
        #expect(exits?.contains("exited with status 1") == true && exits?.contains("this binary refuses") == true, "\(exits ?? "")")
        try attached.expectIntact()

        // Dies by a signal while it holds the handover, as a crash while restoring does.
        server.replaceBinary(withScript: "kill -SEGV $$")
        let crashes = server.failedUpgrade()
        #expect(crashes?.contains("killed by signal 11") == true, "\(crashes ?? "")")
        try attached.expectIntact()

        // The real umdev, given a handover whose version it does not read:
        // the script rewrites the version field (bytes 4-5) to 99 first.
        server.replaceBinary(withScript: """
            printf 'c\\000' | dd of=/proc/self/fd/$UMDEV_HANDOVER bs=1 seek=4 conv=notrunc 2>/dev/null
            exec \(umdevExecutable()) "$@"
            """)
        let version = server.failedUpgrade()
        #expect(version?.contains("version 99") == true, "\(version ?? "")")
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        #expect(server.isRunning)

        // And with the binary back, the upgrade goes through.
        server.restoreBinary()
        server.upgrade()
        try attached.expectIntact()
    }
}

/// A viewer's connection to a display socket, offering the plane extension.
private func connectDisplay(_ path: String) throws -> VFIOUserClient {
    let c = try VFIOUserClient(path: path)
    try c.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
    return c
}
