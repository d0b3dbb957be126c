import CShim
import Foundation
import Glibc
import Locking
import Logging
import MTTY
import PCI
import TestDevice
import Testing
import UnixSocket
import VFIOUser
import VFIOUserClient
import VFIOUserServer

@Suite("hostile and careless clients", .serialized)
struct CarelessClientTests {
    @Test("a second client gets EBUSY in reply to its VERSION at once, and the server logs both pids")
    func secondClientRefused() throws {
        let log = LogCapture()
        let path = socketPath("busy")
        let server = try DeviceServer(host: DeviceHost(device: try MTTY(ports: 2), typeName: "mtty-2"), path: path, logger: log.logger)
        server.start()
        defer { server.stop() }
        let first = try VFIOUserClient(path: path)
        try first.negotiate()
        let second = try VFIOUserClient(path: path)
        let start = Date()
        #expect(throws: ClientError.remote(EBUSY)) { try second.negotiate() }
        #expect(Date().timeIntervalSince(start) < 1.0)
        #expect(throws: ClientError.self) { try second.deviceInfo() }   // closed
        expectAlive(first)
        let line = try #require(log.all.first { $0.hasPrefix("notice refusing a second client") })
        #expect(line.contains("holder=\(getpid())") && line.contains("pid=\(getpid())"))
        // Once the first leaves, the next is served.
        first.disconnect()
        let third = try VFIOUserClient(path: path)
        try third.negotiate()
        expectAlive(third)
    }

    @Test("a client connecting just as the previous one leaves is served, not refused")
    func handoverIsNotRefused() throws {
        let s = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        for _ in 0..<50 {
            let c = try s.connect()
            expectAlive(c)
            c.disconnect()
        }
    }

    @Test("a client that closed while the server was still busy with its request leaves the device to the next")
    func slowLeaverHandsOver() throws {
        // The first client's last read takes a second, four times the
        // handover grace; the next client must wait for it, not get EBUSY.
        let slow = SlowReads(try TestDevice(mappable: true), delay: 1)
        let s = try LiveServer(slow)
        let first = try s.connect()
        try first.sendRaw(rawMessage(id: 9, command: Command.regionRead.rawValue, payload: le64(0x10) + le32(0) + le32(1)))
        #expect(slow.reading.wait(timeout: 5) { $0 })
        first.disconnect()
        let start = Date()
        let next = try s.connect()
        #expect(Date().timeIntervalSince(start) > 0.5)
        expectAlive(next)
    }

    @Test("device DMA into pages the client truncated away fails with EFAULT; the server lives")
    func truncatedMemfd() throws {
        let s = try LiveServer()
        let c = try s.connect()
        let fd = umdev_memfd("shrinking-ram")
        defer { close(fd) }
        #expect(ftruncate(fd, 1 << 16) == 0)
        try c.dmaMap(address: 0x40_0000, size: 1 << 16, fd: fd)
        func dma(_ command: UInt32) throws -> UInt32 {
            try c.write32(region: 0, offset: TestDevice.Register.dmaAddress, 0x40_0100)
            try c.write32(region: 0, offset: TestDevice.Register.dmaAddress + 4, 0)
            try c.write32(region: 0, offset: TestDevice.Register.dmaLength, 64)
            try c.write32(region: 0, offset: TestDevice.Register.dmaCommand, command)
            return try c.read32(region: 0, offset: TestDevice.Register.dmaStatus)
        }
        #expect(try dma(1) == 0)
        #expect(ftruncate(fd, 0) == 0)          // the client pulls the memory away
        #expect(try dma(1) == UInt32(EFAULT))   // device reads it: refused, not SIGBUS
        #expect(try dma(2) == UInt32(EFAULT))   // and writes
        expectAlive(c)
        #expect(ftruncate(fd, 1 << 16) == 0)    // given back, the same window works again
        #expect(try dma(2) == 0)
    }

    @Test("a client that stops reading replies is dropped after the stall timeout; other devices carry on")
    func stalledReaderDropped() throws {
        let path = socketPath("stall")
        let quiet = quietLogger
        let server = try DeviceServer(host: DeviceHost(device: try TestDevice(mappable: true), typeName: "test"),
                                      path: path, logger: quiet, stallTimeout: 0.5)
        server.start()
        defer { server.stop() }
        let other = try LiveServer(try MTTY(ports: 1), type: "mtty-1")
        let bystander = try other.connect()

        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        // 4 KiB reads, thousands of them, and never a reply read: the
        // server's sends fill the socket and then block.
        var request = [UInt8](repeating: 0, count: 32)
        request.withUnsafeMutableBytes { p in
            Header(messageID: 1, command: Command.regionRead.rawValue, messageSize: 32).store(to: p.baseAddress!)
            p.storeBytes(of: UInt64(0), toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: UInt32(0), toByteOffset: 24, as: UInt32.self)
            p.storeBytes(of: UInt32(4096), toByteOffset: 28, as: UInt32.self)
        }
        var burst: [UInt8] = []
        for _ in 0..<256 { burst += request }
        let start = Date()
        var dropped = false
        for _ in 0..<40 {
            do { try c.sendRaw(burst) } catch { dropped = true; break }
            // Meanwhile the other device answers as usual.
            expectAlive(bystander)
            if !server.isAttached { dropped = true; break }
        }
        #expect(server.waitUntilDetached(seconds: 5))
        let elapsed = Date().timeIntervalSince(start)
        #expect(dropped || !server.isAttached)
        #expect(elapsed < 5)
        expectAlive(bystander)
        // The device is free for the next client.
        let next = try VFIOUserClient(path: path)
        try next.negotiate()
        expectAlive(next)
    }

    @Test("a million hostile messages leave the server's memory and descriptors as they were")
    func boundedUnderHostileTraffic() throws {
        // The server in a process of its own: its RSS and descriptors are its alone.
        // Under AddressSanitizer freed memory is held in a quarantine (256 MiB
        // by default) before reuse, which is RSS growth the allocator users run
        // does not have; without it, growth still means a leak.
        let asan = ProcessInfo.processInfo.environment["ASAN_OPTIONS"].map { $0 + ":" } ?? ""
        let s = try ServerProcess(type: "test", environment: ["ASAN_OPTIONS": asan + "quarantine_size_mb=0"])
        let c = try VFIOUserClient(path: s.path)
        try c.negotiate()
        let messages = Int(ProcessInfo.processInfo.environment["UMDEV_HOSTILE_MESSAGES"] ?? "") ?? 1_000_000
        let kinds: [[UInt8]] = [
            rawMessage(command: 99, payload: [1, 2, 3]),                                  // unknown command
            rawMessage(command: Command.deviceGetRegionInfo.rawValue, payload: [32, 0, 0, 0] + [UInt8](repeating: 0xff, count: 28)),
            rawMessage(command: Command.regionRead.rawValue, payload: [UInt8](repeating: 0xff, count: 16)),
            rawMessage(command: Command.dmaUnmap.rawValue, payload: [24] + [UInt8](repeating: 0, count: 23)),
            rawMessage(command: Command.deviceSetIRQs.rawValue, payload: [20, 0, 0, 0, 0x24, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
            rawMessage(command: Command.version.rawValue, payload: [0, 0, 0, 0] + Array("{\"capabilities\":[]}".utf8) + [0]),
            rawMessage(command: Command.dmaMap.rawValue, payload: [32, 0, 0, 0, 3, 0, 0, 0] + [UInt8](repeating: 0, count: 24)),
            rawMessage(command: Command.regionWrite.rawValue, payload: [0x3c, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0x0b]),
        ]
        func round(_ n: Int) throws {
            var batch: [UInt8] = []
            for i in 0..<256 { batch += kinds[i % kinds.count] }
            var sent = 0
            while sent < n {
                try c.sendRaw(batch)
                for _ in 0..<256 { _ = try c.receiveMessage() }
                sent += 256
            }
        }
        try round(20_000)                     // warm up: buffers, caches
        let rss0 = residentKiB(of: s.pid), fds0 = s.openFDs()
        try round(messages)
        let rss1 = residentKiB(of: s.pid), fds1 = s.openFDs()
        expectAlive(c)
        #expect(fds1 == fds0)
        #expect(rss1 - rss0 < 512, "the server's RSS grew from \(rss0) to \(rss1) KiB over \(messages) messages")
    }
}

func residentKiB(of pid: pid_t) -> Int {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
}

@Suite("opt-in polling")
struct PollingTests {
    @Test("a server that spins for requests answers them like one that blocks, and still sees the client leave")
    func pollingServes() throws {
        let quiet = quietLogger
        let path = socketPath("poll")
        let server = try DeviceServer(host: DeviceHost(device: try MTTY(ports: 2), typeName: "mtty-2"), path: path,
                                      logger: quiet, pollMicroseconds: 200)
        server.start()
        defer { server.stop() }
        #expect(server.pollMicroseconds == 200)
        let c = try VFIOUserClient(path: path)
        try c.negotiate()
        for i in 0..<2000 {
            try c.write8(region: 0, offset: 7, UInt8(truncatingIfNeeded: i))
            #expect(try c.read8(region: 0, offset: 7) == UInt8(truncatingIfNeeded: i))
        }
        // Real time is the point: idle longer than the 200 µs spin, so the
        // server gives up polling and blocks, then wakes for the next request.
        usleep(5000)
        #expect(try c.read8(region: 0, offset: 7) == UInt8(truncatingIfNeeded: 1999))
        c.disconnect()
        #expect(server.waitUntilDetached(seconds: 2))
    }
}

/// A device whose first region read takes `delay` seconds.
final class SlowReads: VFIODevice {
    let inner: VFIODevice
    let delay: Double
    let reading = Locked(false)
    private var done = false
    init(_ inner: VFIODevice, delay: Double) { self.inner = inner; self.delay = delay }
    var regions: [Region] { inner.regions }
    var irqs: [IRQ] { inner.irqs }
    var supportsReset: Bool { inner.supportsReset }
    var interrupts: InterruptSink? { get { inner.interrupts } set { inner.interrupts = newValue } }
    var dma: DMAAccess? { get { inner.dma } set { inner.dma = newValue } }
    func read(region: Int, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        if !done {
            done = true
            reading.withLock { $0 = true }
            // Real time is the point: a device access that takes this long.
            usleep(UInt32(delay * 1e6))
        }
        return inner.read(region: region, offset: offset, into: buffer)
    }
    func write(region: Int, offset: UInt64, data: UnsafeRawBufferPointer) -> Int32 { inner.write(region: region, offset: offset, data: data) }
    func reset() { inner.reset() }
}
