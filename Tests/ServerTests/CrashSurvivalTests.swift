import CShim
import Foundation
import Glibc
import Handover
import MBochs
import PCI
import ServiceManager
import Synchronization
import TestDevice
import Testing
import VFIOUser
import VFIOUserClient
import Viewer

/// A client streaming one request after another, as a VMM does, that
/// gives up on a reply after `timeout` ms (QEMU's proxy after 5 s) and goes
/// on with the next request: what a crash can cost it is counted, not fatal.
final class CrashStreamer: @unchecked Sendable {
    // @unchecked: the counters are atomic, the failures behind a Mutex; the thread is only joined.
    private let stopping = Atomic<Bool>(false)
    private let count = Atomic<Int>(0)
    private let lost = Atomic<Int>(0)
    private let failed = Mutex<[String]>([])
    private var thread: Thread?

    /// `request` sends one request and checks its answer (false: a wrong answer).
    init(_ name: String, _ client: VFIOUserClient, timeout: Int32 = 3_000, request: @escaping (VFIOUserClient) throws -> Bool) {
        nonisolated(unsafe) let c = client
        nonisolated(unsafe) let request = request
        c.replyTimeout = timeout
        let t = Thread { [self] in
            while !stopping.load(ordering: .relaxed) {
                do {
                    if try request(c) { count.add(1, ordering: .relaxed) } else { failed.withLock { $0.append("\(name): wrong answer") } }
                } catch ClientError.system(ETIMEDOUT, _) {
                    lost.add(1, ordering: .relaxed)
                } catch {
                    failed.withLock { $0.append("\(name): \(error)") }
                    return
                }
            }
        }
        thread = t
        t.start()
    }

    var answered: Int { count.load(ordering: .relaxed) }
    /// Requests whose reply never came.
    var unanswered: Int { lost.load(ordering: .relaxed) }
    var failures: [String] { failed.withLock { $0 } }

    /// Waits until `n` more requests than `since` were answered (or one failed, or 20 s passed).
    func waitForAnswers(_ n: Int, since: Int) -> Bool {
        let deadline = Date().addingTimeInterval(20)
        while answered < since + n && Date() < deadline && failures.isEmpty { usleep(1000) }
        return answered >= since + n
    }

    func stop() -> [String] {
        stopping.store(true, ordering: .relaxed)
        while let t = thread, !t.isFinished { usleep(1000) }
        return failures
    }
}

/// The three kinds of device a crash must not cost: the test device (DMA,
/// BAR memory, INTx), an mtty-2 (registers, FIFO) and an mbochs (VRAM, plane).
struct CrashFleet {
    static let testUUID = "3e4f5a6b-7c8d-4e9f-8a0b-1c2d3e4f5a6b"
    static let mttyUUID = "4f5a6b7c-8d9e-4f0a-9b1c-2d3e4f5a6b7c"
    static let bochsUUID = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
    let attached: AttachedClient
    let serial: VFIOUserClient
    let vmm: VFIOUserClient
    let vram: DisplayServerTests.Mapping
    let plane: GfxPlaneInfo
    let streamers: [CrashStreamer]

    /// Starts the three instances through `umdev` and attaches a client to each.
    init(run: String, serialClient: VFIOUserClient? = nil) throws {
        func umdev(_ a: [String]) throws -> CommandOutcome { try runUmdev(a + ["--run-dir", run]) }
        #expect(try umdev(["start", "--uuid", Self.testUUID, "--type", "test"]).status == 0)
        #expect(try umdev(["start", "--uuid", Self.mttyUUID, "--type", "mtty-2"]).status == 0)
        #expect(try umdev(["start", "--uuid", Self.bochsUUID, "--type", "mbochs-large"]).status == 0)
        attached = try AttachedClient(path: "\(run)/\(Self.testUUID).sock")
        serial = try VFIOUserClient(path: "\(run)/\(Self.mttyUUID).sock")
        try serial.negotiate()
        try serial.write8(region: 0, offset: 7, 0xa5)     // scratch
        try serial.write8(region: 0, offset: 2, 0x01)     // FIFO on
        for b in Array("kept".utf8) { try serial.write8(region: 0, offset: 0, b) }
        vmm = try VFIOUserClient(path: "\(run)/\(Self.bochsUUID).sock")
        try vmm.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
        try setBochsMode(vmm, width: 640, height: 480, vram: 4 << 20)
        vram = try DisplayServerTests.Mapping(vmm, region: MBochs.vramRegion)
        TestPattern.drawXRGB(into: vram.base, width: 640, height: 480, stride: 2560, seed: 9)
        plane = try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf)
        let xres = UInt64(MBochs.MMIO.dispi.lowerBound + 2 * DispiRegisters.Index.xres)
        streamers = [
            CrashStreamer("test", attached.client) { try $0.read32(region: 0, offset: TestDevice.Register.scratch) == 0xfeed_f00d },
            CrashStreamer("mtty", serial) { try $0.read8(region: 0, offset: 7) == 0xa5 },
            CrashStreamer("mbochs", vmm) { try $0.read16(region: UInt32(MBochs.mmioRegion), offset: xres) == 640 },
        ]
    }

    /// Each client had `n` more requests answered than `since`.
    func waitForAnswers(_ n: Int, since: [Int], sourceLocation: SourceLocation = #_sourceLocation) {
        for (s, before) in zip(streamers, since) { #expect(s.waitForAnswers(n, since: before), sourceLocation: sourceLocation) }
    }

    var answered: [Int] { streamers.map(\.answered) }

    /// Stops the streams; checks each lost at most `most` replies and failed
    /// nothing; then that every device is as it was.
    func expectIntact(unansweredAtMost most: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
        for s in streamers {
            #expect(s.stop() == [], sourceLocation: sourceLocation)
            #expect(s.unanswered <= most, "\(s.unanswered) requests unanswered", sourceLocation: sourceLocation)
        }
        try attached.expectIntact(sourceLocation: sourceLocation)
        try attached.expectInterruptDelivered(sourceLocation: sourceLocation)
        #expect(try vmm.queryPlane(flags: VFIO.gfxPlaneDmabuf) == plane, sourceLocation: sourceLocation)
        let shown = PixelFormat.rgb(pixels: UnsafeRawPointer(vram.base), fourcc: plane.drmFormat,
                                    width: 640, height: 480, stride: 2560)
        #expect(shown == TestPattern.image(width: 640, height: 480, seed: 9), sourceLocation: sourceLocation)
        var got: [UInt8] = []
        while try serial.read8(region: 0, offset: 5) & 0x01 != 0 { got.append(try serial.read8(region: 0, offset: 0)) }
        #expect(got == Array("kept".utf8), sourceLocation: sourceLocation)
    }
}

/// A umdev (`serve` or `daemon`, `--fd-store`) under a test's fd store, as
/// systemd runs one: started, killed, and started again with what the store
/// kept, each start waited for up to its READY=1. Killed when it goes.
final class KeptProcess {
    let scratch = ScratchDirectory("umdev-crash")
    var dir: String { scratch.path }
    var log: String { dir + "/log" }
    let manager: FDStore
    let arguments: [String]
    private(set) var pid: pid_t = 0
    private var starts = 0

    /// `arguments`: the command line but for `--fd-store` and the log level, given the scratch directory.
    init(_ arguments: (String) -> [String]) throws {
        manager = try FDStore(path: scratch.path + "/notify")
        self.arguments = arguments(scratch.path) + ["--fd-store", "--log-level", "info"]
        #expect(try start())
    }

    /// A start with what the store keeps; true once it said READY=1.
    func start() throws -> Bool {
        pid = try manager.start(umdevExecutable(), arguments, stderr: log)
        starts += 1
        return manager.waitReadies(starts)
    }

    /// `kill -9`, and the exit waited for.
    func crash() {
        kill(pid, SIGKILL)
        waitpid(pid, nil, 0)
    }

    /// A crash and the start after it.
    func restart() throws -> Bool {
        crash()
        return try start()
    }

    /// A live upgrade (SIGUSR2), up to the new process's READY=1.
    func upgrade() -> Bool {
        kill(pid, SIGUSR2)
        starts += 1
        return manager.waitReadies(starts)
    }

    var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    deinit { crash() }
}

@Suite("a crash costs no device: state kept in the fd store", .serialized)
struct CrashSurvivalTests {
    /// `kill -9` of a daemon serving three devices, each streamed to, 20
    /// times: after each start every client goes on on its own connection,
    /// at most one request per kill unanswered.
    @Test func aKilledDaemonLosesNoDevice() throws {
        let kept = try KeptProcess { ["daemon", "--run-dir", $0 + "/run", "--config-dir", $0 + "/config"] }
        let run = kept.dir + "/run"
        let fleet = try CrashFleet(run: run)
        let listed = try runUmdev(["list", "--dumpjson", "--run-dir", run]).out
        let kills = 20
        for round in 1...kills {
            let before = fleet.answered
            fleet.waitForAnswers(20, since: before)
            #expect(try kept.restart(), "start \(round)")
            fleet.waitForAnswers(50, since: fleet.answered)
        }
        try fleet.expectIntact(unansweredAtMost: kills)
        #expect(try runUmdev(["list", "--dumpjson", "--run-dir", run]).out == listed)
        let text = kept.logText
        #expect(text.components(separatedBy: "took over 3 instance(s)").count - 1 == kills, "\(text.suffix(4000))")
        #expect(!text.contains("afresh") && !text.contains("unusable"), "\(text.suffix(4000))")
    }

    /// What the store keeps but cannot be resumed costs that instance only:
    /// one whose device cannot be rebuilt starts afresh as it was created,
    /// one whose state cannot be read at all starts from its definition,
    /// and the others go on with their clients.
    @Test func anInstanceThatCannotBeResumedStartsAfresh() throws {
        let kept = try KeptProcess { ["daemon", "--run-dir", $0 + "/run", "--config-dir", $0 + "/config"] }
        let run = kept.dir + "/run", manager = kept.manager
        func umdev(_ a: [String]) throws -> CommandOutcome { try runUmdev(a + ["--run-dir", run]) }
        let mtty = CrashFleet.mttyUUID, defined = CrashFleet.bochsUUID
        #expect(try umdev(["start", "--uuid", CrashFleet.testUUID, "--type", "test"]).status == 0)
        #expect(try umdev(["start", "--uuid", mtty, "--type", "mtty-2", "--attr", "label=kept"]).status == 0)
        #expect(try umdev(["define", "--uuid", defined, "--type", "mtty-1"]).status == 0)
        #expect(try umdev(["start", "--uuid", defined]).status == 0)
        let attached = try AttachedClient(path: "\(run)/\(CrashFleet.testUUID).sock")
        let serial = try VFIOUserClient(path: "\(run)/\(mtty).sock")
        try serial.negotiate()
        try serial.write8(region: 0, offset: 7, 0x77)
        kept.crash()

        // The mtty's state: only its instance section left (a device that cannot be rebuilt).
        let stored = manager.stored
        let memfd = try #require(stored.first { $0.name == "umdev-state-\(mtty)" }?.fd)
        var st = stat()
        fstat(memfd, &st)
        var file = [UInt8](repeating: 0, count: Int(st.st_size))
        _ = file.withUnsafeMutableBytes { pread(memfd, $0.baseAddress, $0.count, 0) }
        let saved = try Handover.decode(try StateKeeper.copy(inFile: file), descriptorCount: 1 << 20)
        let document = Handover(sections: saved.sections.filter { $0.type == SectionType.instance.rawValue }).encode()
        var w = StateWriter()
        w.u32(0x5344_4d55); w.u16(1); w.u16(0); w.u64(99); w.u64(64); w.u64(UInt64(document.count))
        w.u64(StateFileSupport.fnv(document))
        let spoiled = w.bytes + [UInt8](repeating: 0, count: 64 - w.bytes.count) + document
        #expect(spoiled.withUnsafeBytes { pwrite(memfd, $0.baseAddress, $0.count, 0) } == spoiled.count)
        // The defined instance's state: not readable at all.
        let definedState = try #require(stored.first { $0.name == "umdev-state-\(defined)" }?.fd)
        var zero: UInt32 = 0
        #expect(pwrite(definedState, &zero, 4, 0) == 4)

        #expect(try kept.start())
        let text = kept.logText
        #expect(text.contains("cannot resume \(mtty) from the fd store, starting it afresh"), "\(text.suffix(3000))")
        #expect(text.contains("the fd store's state of \(defined) is unusable"), "\(text.suffix(3000))")
        #expect(text.contains("started \(defined) (mtty-1) afresh from its definition"), "\(text.suffix(3000))")
        // The test device's client noticed nothing.
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        // The mtty runs again, as created (its label too), from its power-on state; its old client was let go.
        let listed = try umdev(["list", "--dumpjson"]).out
        #expect(listed.contains(mtty) && listed.contains(defined) && listed.contains("kept"), "\(listed)")
        #expect(throws: (any Error).self) { try serial.read8(region: 0, offset: 7) }
        let again = try VFIOUserClient(path: "\(run)/\(mtty).sock")
        try again.negotiate()
        #expect(try again.read8(region: 0, offset: 7) == 0)
        // And the store holds what the devices now are: no stale state.
        let names = manager.stored.map(\.name)
        #expect(names.filter { $0.hasPrefix("umdev-state-") }.sorted()
                == ["umdev-state-\(CrashFleet.testUUID)", "umdev-state-\(mtty)", "umdev-state-\(defined)", "umdev-state-daemon"].sorted(),
                "\(names)")
    }

    /// A live upgrade under an fd store: the new process replaces what the
    /// old one stored, and a crash after it costs nothing either.
    @Test func aCrashAfterALiveUpgradeCostsNothing() throws {
        let kept = try KeptProcess { ["serve", "--type", "test", "--socket", $0 + "/test.sock"] }
        let path = kept.dir + "/test.sock", manager = kept.manager
        let attached = try AttachedClient(path: path)
        let before = Set(manager.stored.map(\.name)).count
        #expect(kept.upgrade())
        try attached.expectIntact()
        #expect(Set(manager.stored.map(\.name)).count == before, "\(manager.stored.map(\.name))")
        #expect(manager.stored.count == before, "each descriptor once: \(manager.stored.map(\.name))")
        #expect(try kept.restart())
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
    }

    /// A store holding a name twice (a state, a slot): the first is used,
    /// the second closed, and the store holds each once again.
    @Test func aNameStoredTwiceIsTakenOnce() throws {
        let kept = try KeptProcess { ["serve", "--type", "test", "--socket", $0 + "/test.sock"] }
        let path = kept.dir + "/test.sock", manager = kept.manager
        let attached = try AttachedClient(path: path)
        kept.crash()
        let names = manager.stored.map(\.name)
        let junk = umdev_memfd("junk")
        defer { close(junk) }
        manager.add(junk, name: "umdev-state-serve")
        let slot = try #require(names.first { $0.hasPrefix("umdev-d-") })
        manager.add(junk, name: slot)
        #expect(try kept.start())
        try attached.expectIntact()
        try attached.expectInterruptDelivered()
        let text = kept.logText
        #expect(text.contains("holds the state of serve twice") && text.contains("holds \(slot) twice"), "\(text.suffix(2000))")
        #expect(manager.stored.map(\.name).sorted() == names.sorted())
    }

    /// A client that sends a request before the last reply came (two in one
    /// write): the state saved for the first holds the second, unread; once
    /// the second is answered that state is saved again, so a process started
    /// after a crash does not answer it twice.
    @Test func aRequestReadAheadIsNotAnsweredTwice() throws {
        let kept = try KeptProcess { ["serve", "--type", "test", "--socket", $0 + "/test.sock"] }
        let path = kept.dir + "/test.sock"
        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        func message(_ id: UInt16, _ command: Command, _ payload: [UInt8]) -> [UInt8] {
            var m = [UInt8](repeating: 0, count: Header.size)
            m.withUnsafeMutableBytes {
                Header(messageID: id, command: command.rawValue, messageSize: UInt32(Header.size + payload.count)).store(to: $0.baseAddress!)
            }
            return m + payload
        }
        func access(_ value: UInt32?) -> [UInt8] {
            var p: [UInt8] = []
            withUnsafeBytes(of: TestDevice.Register.scratch.littleEndian) { p += $0 }
            withUnsafeBytes(of: UInt32(0).littleEndian) { p += $0 }        // region 0
            withUnsafeBytes(of: UInt32(4).littleEndian) { p += $0 }        // 4 bytes
            if let value { withUnsafeBytes(of: value.littleEndian) { p += $0 } }
            return p
        }
        try c.sendRaw(message(900, .regionWrite, access(0x5eed_1234)) + message(901, .regionRead, access(nil)))
        let first = try c.receiveMessage(), second = try c.receiveMessage()
        #expect(first.header.messageID == 900 && second.header.messageID == 901 && !second.header.isError)
        #expect(try kept.restart())
        #expect(c.isQuiet(for: 500), "the restarted process answered a request a second time")
        #expect(try c.read32(region: 0, offset: TestDevice.Register.scratch) == 0x5eed_1234)
    }

    /// A region write the dead process had read and not yet saved is handled
    /// again by the next one, and its client gets the reply it waits for; a
    /// record the saved state already includes is not.
    @Test func aWriteReadButNotSavedIsHandledAgain() throws {
        let kept = try KeptProcess { ["serve", "--type", "test", "--socket", $0 + "/test.sock"] }
        let path = kept.dir + "/test.sock", manager = kept.manager
        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        try c.write32(region: 0, offset: TestDevice.Register.scratch, 0x1111_1111)
        kept.crash()
        // As a process killed between reading a write and saving it leaves the memfd: the write
        // recorded for the generation after the saved copy's.
        let memfd = try #require(manager.stored.first { $0.name == "umdev-state-serve" }?.fd)
        var generation: UInt64 = 0
        #expect(pread(memfd, &generation, 8, 8) == 8)
        var request = [UInt8](repeating: 0, count: Header.size)
        var payload: [UInt8] = []
        withUnsafeBytes(of: TestDevice.Register.scratch.littleEndian) { payload += $0 }
        withUnsafeBytes(of: UInt32(0).littleEndian) { payload += $0 }
        withUnsafeBytes(of: UInt32(4).littleEndian) { payload += $0 }
        withUnsafeBytes(of: UInt32(0x2222_2222).littleEndian) { payload += $0 }
        request.withUnsafeMutableBytes {
            Header(messageID: 777, command: Command.regionWrite.rawValue, messageSize: UInt32(Header.size + payload.count)).store(to: $0.baseAddress!)
        }
        request += payload
        #expect(request.withUnsafeBytes { pwrite(memfd, $0.baseAddress, $0.count, 64) } == request.count)
        var w = StateWriter()
        w.u64(generation + 1); w.u64(UInt64(request.count)); w.u64(StateFileSupport.fnv(request))
        #expect(w.bytes.withUnsafeBytes { pwrite(memfd, $0.baseAddress, $0.count, 40) } == 24)
        #expect(try kept.start())
        let reply = try c.receiveMessage()
        #expect(reply.header.messageID == 777 && reply.header.isReply && !reply.header.isError)
        #expect(try c.read32(region: 0, offset: TestDevice.Register.scratch) == 0x2222_2222)
        let text = kept.logText
        #expect(text.contains("handled again"), "\(text.suffix(2000))")
        // Saved since: the record is stale, and the next start handles nothing twice.
        #expect(try kept.restart())
        #expect(c.isQuiet(for: 300))
        #expect(try c.read32(region: 0, offset: TestDevice.Register.scratch) == 0x2222_2222)
    }

    /// `umdev serve --fd-store`, killed: the device and its client come back.
    @Test func aKilledServeKeepsItsClient() throws {
        let kept = try KeptProcess { ["serve", "--type", "mtty-2", "--socket", $0 + "/mtty.sock"] }
        let path = kept.dir + "/mtty.sock"
        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        let intx = umdev_eventfd(0)
        defer { close(intx) }
        try c.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [intx])
        try c.write8(region: 0, offset: 7, 0x3c)
        try c.write8(region: 0, offset: 1, 0x01)
        for _ in 1...3 {
            #expect(try kept.restart())
            #expect(try c.read8(region: 0, offset: 7) == 0x3c)
        }
        try c.write8(region: 0, offset: 0, 0x41)
        #expect(waitSignal(intx) == 1, "the RX interrupt reached the eventfd registered before the kills")
        #expect(try c.read8(region: 0, offset: 0) == 0x41)
    }
}

enum StateFileSupport {
    static func fnv(_ b: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for x in b { h = (h ^ UInt64(x)) &* 0x100_0000_01b3 }
        return h
    }
}
