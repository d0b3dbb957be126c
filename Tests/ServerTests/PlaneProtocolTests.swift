import CShim
import Foundation
import Glibc
import Logging
import MBochs
import MDPY
import MTTY
import PCI
import Testing
import VFIOUser
import VFIOUserClient
import VFIOUserServer
import Viewer

/// A display socket beside a LiveServer, as `umdev serve` opens one.
final class LiveDisplay {
    let server: DisplayServer
    let path: String
    init(_ live: LiveServer) throws {
        path = live.path + ".display"
        server = try DisplayServer(description: live.server.host.description, path: path, logger: quietLogger)
        server.start()
    }
    func connect(planes: Bool = true) throws -> VFIOUserClient {
        let c = try VFIOUserClient(path: path)
        try c.negotiate(json: planes ? VFIOUserClient.planeCapabilitiesJSON : VFIOUserClient.qemuCapabilitiesJSON)
        return c
    }
    deinit { server.stop() }
}

/// bochs-drm's mode set and pan over a client, as a guest does through QEMU.
func setBochsMode(_ c: VFIOUserClient, width: Int, height: Int, x: Int = 0, y: Int = 0, vram: Int = 16 << 20) throws {
    for w in DispiRegisters.modeSet(width: width, height: height, vramSize: UInt64(vram)) + DispiRegisters.pan(x: x, y: y) {
        try c.write16(region: UInt32(MBochs.mmioRegion), offset: w.offset, w.value)
    }
}

func planeClient(_ s: some ServedDevice) throws -> VFIOUserClient {
    let c = try s.connect(negotiate: false)
    try c.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
    return c
}

@Suite("display-plane protocol")
struct PlaneProtocolTests {
    let probe = VFIO.gfxPlaneProbe, region = VFIO.gfxPlaneRegion, dmabuf = VFIO.gfxPlaneDmabuf

    @Test("negotiation: echoed only when proposed; without it the commands do not exist")
    func negotiation() throws {
        let s = MemoryServer(try MBochs(type: .small), type: "mbochs-small")
        let qemu = try s.connect()
        #expect(!qemu.serverVersionJSON.contains("gfx"))
        #expect(qemu.serverVersionJSON == #"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"migration":{"pgsize":4096},"write_multiple":true}}"#)
        #expect(throws: ClientError.remote(EINVAL)) { try qemu.queryPlane(flags: probe | dmabuf) }
        #expect(throws: ClientError.remote(EINVAL)) { try qemu.dmabuf(id: 1) }
        expectAlive(qemu)
        drop(qemu)
        let viewer = try planeClient(s)
        #expect(viewer.serverVersionJSON.hasSuffix(#""write_multiple":true,"x-umdev-gfx-plane":{"version":1}}}"#))
        drop(viewer)
        // A later version is answered with ours; a malformed key is refused.
        let future = try s.connect(negotiate: false)
        try future.negotiate(json: #"{"capabilities":{"x-umdev-gfx-plane":{"version":9}}}"#)
        #expect(future.serverVersionJSON.contains(#""x-umdev-gfx-plane":{"version":1}"#))
        drop(future)
        let bad = try s.connect(negotiate: false)
        #expect(throws: ClientError.remote(EINVAL)) { try bad.negotiate(json: #"{"capabilities":{"x-umdev-gfx-plane":true}}"#) }
        #expect(throws: ClientError.remote(EINVAL)) { try bad.negotiate(json: #"{"capabilities":{"x-umdev-gfx-plane":{"version":0}}}"#) }
    }

    /// Ends a client's connection now, before the next one connects (the
    /// device socket serves one client at a time).
    func drop(_ c: VFIOUserClient) { c.disconnect() }

    @Test("PROBE and flag rules are the kernel's, per device kind")
    func flagRules() throws {
        let cases: [(VFIODevice, String, UInt32?)] = [
            (try MBochs(type: .small), "mbochs-small", dmabuf), (try MDPY(type: .vga), "mdpy-vga", region),
            (try MTTY(ports: 1), "mtty-1", nil),
        ]
        for (device, type, kind) in cases {
            let s = MemoryServer(device, type: type)
            let c = try planeClient(s)
            for flags in [probe | dmabuf, probe | region, probe, probe | dmabuf | region, dmabuf | region, 0, dmabuf, region, 8, probe | 8] {
                let ok = kind.map { flags == probe | $0 || flags == $0 } ?? false
                if ok {
                    let r = try c.queryPlane(flags: flags)
                    #expect(r.flags == flags && r.argsz == 64)
                } else {
                    #expect(throws: ClientError.remote(EINVAL), "\(type) flags \(flags)") { try c.queryPlane(flags: flags) }
                }
            }
            #expect(try c.probePlaneKind() == kind.map { $0 == region ? .region : .dmabuf })
            expectAlive(c)
        }
    }

    @Test("argsz: at least 60, at most the payload; the reply is argsz bytes")
    func argszRules() throws {
        let s = MemoryServer(try MDPY(type: .vga), type: "mdpy-vga")
        let c = try planeClient(s)
        func raw(_ argsz: UInt32, payload: Int) throws -> Reply {
            var p = le32(argsz) + le32(region) + le32(VFIO.drmPlanePrimary)
            p += [UInt8](repeating: 0, count: payload - p.count)
            return try c.request(.queryGfxPlane, payload: p)
        }
        #expect(throws: ClientError.remote(EINVAL)) { try raw(59, payload: 64) }
        #expect(throws: ClientError.remote(EINVAL)) { try raw(64, payload: 60) }
        #expect(throws: ClientError.remote(EINVAL)) { try raw(56, payload: 56) }
        #expect(throws: ClientError.remote(EINVAL)) { try raw(68, payload: 68) }
        let short = try raw(60, payload: 60)
        #expect(short.payload.count == 60 && short.u32(12) == DRMFormat.xrgb8888 && short.u32(56) == 9)
        let full = try raw(64, payload: 64)
        #expect(full.payload.count == 64)
        #expect(throws: ClientError.remote(EINVAL)) { try c.request(.getGfxDmabuf, payload: le32(1) + [0]) }
        expectAlive(c)
    }

    @Test("mdpy: a region plane in region 9; the cursor plane is disabled")
    func regionPlane() throws {
        let s = MemoryServer(try MDPY(type: .xga), type: "mdpy-xga")
        let c = try planeClient(s)
        for type in [VFIO.drmPlanePrimary, VFIO.drmPlaneOverlay] {
            let p = try c.queryPlane(flags: region, planeType: type)
            #expect(p.drmFormat == DRMFormat.xrgb8888 && p.width == 1024 && p.height == 768)
            #expect(p.stride == 4096 && p.size == 4096 * 768 && p.id == 9 && p.drmFormatModifier == 0)
        }
        let cursor = try c.queryPlane(flags: region, planeType: VFIO.drmPlaneCursor)
        #expect(cursor.drmFormat == 0 && cursor.width == 0 && cursor.size == 0 && cursor.id == 0)
        #expect(throws: ClientError.remote(ENOTTY)) { try c.dmabuf(id: 1) }
    }

    @Test("mbochs: disabled until a mode is set; then the mode, with ids that change on mode changes and pans only")
    func dmabufPlane() throws {
        let s = MemoryServer(try MBochs(type: .medium), type: "mbochs-medium")
        let c = try planeClient(s)
        let off = try c.queryPlane(flags: dmabuf)
        #expect(off.drmFormat == 0 && off.width == 0 && off.height == 0 && off.stride == 0 && off.size == 0 && off.id == 0)
        try setBochsMode(c, width: 1024, height: 768)
        let a = try c.queryPlane(flags: dmabuf)
        #expect(a.drmFormat == DRMFormat.xrgb8888 && a.width == 1024 && a.height == 768 && a.stride == 4096 && a.size == 4096 * 768)
        #expect(a.id != 0)
        #expect(try c.queryPlane(flags: dmabuf).id == a.id)                      // asking again changes nothing
        try setBochsMode(c, width: 1024, height: 768)
        #expect(try c.queryPlane(flags: dmabuf).id == a.id)                      // identical mode set
        let cursor = try c.queryPlane(flags: dmabuf, planeType: VFIO.drmPlaneCursor)
        #expect(cursor.drmFormat == 0 && cursor.id == 0)
        try setBochsMode(c, width: 800, height: 600)
        let b = try c.queryPlane(flags: dmabuf)
        #expect(b.id != a.id && b.width == 800 && b.stride == 3200)
        try c.write16(region: 2, offset: 0x512, 600)                              // pan to the second buffer
        let panned = try c.queryPlane(flags: dmabuf)
        #expect(panned.id != b.id && panned.width == 800)
        try c.write16(region: 2, offset: 0x512, 0)
        #expect(try c.queryPlane(flags: dmabuf).id == b.id)                      // and back
    }

    @Test("GET_GFX_DMABUF: a fresh fd per call whose mapping at the offset holds what the guest drew")
    func dmabufContents() throws {
        let s = MemoryServer(try MBochs(type: .medium), type: "mbochs-medium")
        let c = try planeClient(s)
        try setBochsMode(c, width: 640, height: 480, y: 512)
        let p = try c.queryPlane(flags: dmabuf)
        let offset = 512 * 2560
        // The guest draws into VRAM through its own mapping of BAR0.
        let bar0 = try DisplayServerTests.Mapping(c, region: 0)
        TestPattern.drawXRGB(into: bar0.base + offset, width: 640, height: 480, stride: 2560, seed: 7)
        let one = try c.dmabuf(id: p.id), two = try c.dmabuf(id: p.id)
        #expect(one.descriptor.rawValue != two.descriptor.rawValue, "a fresh descriptor per call")
        #expect(one.offset == UInt64(offset) && one.size == UInt64(2560 * 480))
        let m = mmap(nil, Int(one.size), PROT_READ, MAP_SHARED, one.descriptor.rawValue, off_t(one.offset))!
        defer { munmap(m, Int(one.size)) }
        let image = PixelFormat.rgb(pixels: m, fourcc: p.drmFormat, width: 640, height: 480, stride: 2560)
        #expect(image == TestPattern.image(width: 640, height: 480, seed: 7))
        #expect(throws: ClientError.remote(ENOENT)) { try c.dmabuf(id: p.id + 100) }
        #expect(throws: ClientError.remote(ENOENT)) { try c.dmabuf(id: 0) }
        // A pan by one pixel puts the plane 4 bytes into a page: refused as the kernel does.
        try c.write16(region: 2, offset: 0x510, 1)
        let unaligned = try c.queryPlane(flags: dmabuf)
        #expect(unaligned.id != p.id && unaligned.drmFormat == DRMFormat.xrgb8888)
        #expect(throws: ClientError.remote(EINVAL)) { try c.dmabuf(id: unaligned.id) }
        // The earlier buffer is still known by its id.
        _ = try c.dmabuf(id: p.id)
        expectAlive(c)
    }
}

@Suite("PlaneMapping")
struct PlaneMappingTests {
    @Test("flips and mode changes cost no new mapping and one GET_GFX_DMABUF per id; frames stay valid")
    func mapsOnce() throws {
        let s = try LiveServer(try MBochs(type: .medium), type: "mbochs-medium")
        let d = try LiveDisplay(s)
        let vmm = try s.connect()
        let viewer = try d.connect()
        let mapping = try PlaneMapping(client: viewer)
        #expect(mapping.kind == .dmabuf)
        #expect(try mapping.refresh() == nil)                    // nothing shown yet
        try setBochsMode(vmm, width: 640, height: 480)
        let bar0 = try DisplayServerTests.Mapping(vmm, region: 0)
        TestPattern.drawXRGB(into: bar0.base, width: 640, height: 480, stride: 2560, seed: 1)
        TestPattern.drawXRGB(into: bar0.base + 480 * 2560, width: 640, height: 480, stride: 2560, seed: 2)
        var firsts: [UnsafeRawPointer] = []
        for flip in 0..<10 {
            try vmm.write16(region: 2, offset: 0x512, flip % 2 == 0 ? 0 : 480)
            let f = try #require(try mapping.refresh())
            #expect(f.offset == (flip % 2 == 0 ? 0 : 480 * 2560))
            #expect(PixelFormat.rgb(f) == TestPattern.image(width: 640, height: 480, seed: flip % 2 == 0 ? 1 : 2))
            firsts.append(f.pixels)
        }
        try setBochsMode(vmm, width: 800, height: 600)
        let f = try #require(try mapping.refresh())
        #expect(f.width == 800 && f.stride == 3200)
        #expect(mapping.mapCount == 1)
        #expect(mapping.dmabufRequests == 3)
        // An earlier frame's pointer still reads the buffer it pointed at.
        #expect(firsts[1].load(fromByteOffset: 0, as: UInt32.self) == TestPattern.rgb(x: 0, y: 0, width: 640, height: 480, seed: 2))
    }

    @Test("a region plane maps its region once")
    func regionOnce() throws {
        let s = try LiveServer(try MDPY(type: .vga), type: "mdpy-vga")
        let d = try LiveDisplay(s)
        let mapping = try PlaneMapping(client: try d.connect())
        #expect(mapping.kind == .region)
        for _ in 0..<5 { _ = try mapping.refresh() }
        #expect(mapping.mapCount == 1 && mapping.dmabufRequests == 0)
        let f = try #require(try mapping.refresh())
        #expect(f.id == 9 && f.width == 640 && f.pixels.load(fromByteOffset: 479 * 2560, as: UInt8.self) == 254)
    }
}

@Suite("display-plane worked example (Protocol/README.md §22)")
struct PlaneWorkedExampleTests {
    /// The hex dumps in the README, as bytes.
    static func bytes(_ hex: String) -> [UInt8] {
        hex.split(separator: "\n").flatMap { line in line.split(separator: " ").dropFirst().map { UInt8($0, radix: 16)! } }
    }

    @Test("the documented bytes are what the server sends")
    func workedExample() throws {
        let s = MemoryServer(try MBochs(type: .medium), type: "mbochs-medium")
        let c = try planeClient(s)
        try setBochsMode(c, width: 1024, height: 768)
        try c.write16(region: 2, offset: 0x512, 256)
        try c.sendRaw(Self.bytes("""
            0000: 05 00 00 7f 50 00 00 00 00 00 00 00 00 00 00 00
            0010: 40 00 00 00 02 00 00 00 01 00 00 00 00 00 00 00
            0020: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
            0030: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
            0040: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
            """))
        let reply = try c.receiveMessage()
        var got: [UInt8] = [UInt8](repeating: 0, count: 16)
        got.withUnsafeMutableBytes { reply.header.store(to: $0.baseAddress!) }
        #expect(got + reply.payload == Self.bytes("""
            0000: 05 00 00 7f 50 00 00 00 01 00 00 00 00 00 00 00
            0010: 40 00 00 00 02 00 00 00 01 00 00 00 58 52 32 34
            0020: 00 00 00 00 00 00 00 00 00 04 00 00 00 03 00 00
            0030: 00 10 00 00 00 00 30 00 00 00 00 00 00 00 00 00
            0040: 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00
            """))
        try c.sendRaw(Self.bytes("0000: 06 00 01 7f 14 00 00 00 00 00 00 00 00 00 00 00\n0010: 02 00 00 00"))
        let dmabuf = try c.receiveMessage()
        got.withUnsafeMutableBytes { dmabuf.header.store(to: $0.baseAddress!) }
        #expect(got + dmabuf.payload == Self.bytes("""
            0000: 06 00 01 7f 28 00 00 00 01 00 00 00 00 00 00 00
            0010: 02 00 00 00 00 00 00 00 00 00 10 00 00 00 00 00
            0020: 00 00 30 00 00 00 00 00
            """))
        #expect(dmabuf.fds.count == 1)
        for fd in dmabuf.fds { close(fd) }
    }
}

@Suite("display socket")
struct DisplaySocketTests {
    @Test("owner-only, and VERSION first, like the device socket")
    func socketBasics() throws {
        let s = try LiveServer(try MBochs(type: .small), type: "mbochs-small")
        let d = try LiveDisplay(s)
        var st = stat()
        #expect(stat(d.path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        let c = try VFIOUserClient(path: d.path)
        #expect(throws: ClientError.remote(EINVAL)) { try c.deviceInfo() }
        try c.negotiate(json: VFIOUserClient.planeCapabilitiesJSON)
        let info = try c.deviceInfo()
        #expect(info.regionCount == 10 && info.irqCount == 5 && info.supportsReset)
        let edid = try c.regionInfo(9)
        #expect(edid.type?.type == 1 && edid.type?.subtype == 1)
        #expect(try c.irqInfo(0).count == 0)
        let vram = try c.regionInfo(0)
        #expect(vram.mappable && vram.fd >= 0 && vram.size == 4 << 20)
    }

    @Test("every command that would change the device, or read its registers, is EPERM; the device is unchanged")
    func refusals() throws {
        let device = try MBochs(type: .small)
        let s = try LiveServer(device, type: "mbochs-small")
        let d = try LiveDisplay(s)
        let vmm = try s.connect()
        try setBochsMode(vmm, width: 800, height: 600, vram: 4 << 20)
        try vmm.write(region: 0, offset: 0, bytes: [1, 2, 3, 4])
        let before = device.planes.current()
        let v = try d.connect()
        let efd = eventfd()
        defer { close(efd) }
        let memfd = umdev_memfd("dma")
        defer { close(memfd) }
        ftruncate(memfd, 4096)
        let refused: [() throws -> Void] = [
            { try v.write(region: 2, offset: 0x502, bytes: [0x20, 0x03]) },
            { _ = try v.read(region: 2, offset: 0x500, count: 2) },
            { _ = try v.read(region: 7, offset: 0, count: 4) },
            { try v.request(.regionWriteMulti, payload: le64(1) + le64(0x502) + le32(2) + le32(2) + le64(0x320)) },
            { try v.setIRQs(index: 0, flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, count: 1, fds: [efd]) },
            { try v.dmaMap(address: 0x10000, size: 4096, fd: memfd) },
            { try v.dmaUnmap(address: 0x10000, size: 4096) },
            { try v.reset() },
            { try v.feature(VFIO.featureMigDeviceState, flags: VFIO.featureGet) },
            { try v.setMigrationState(.stop) },
            { _ = try v.readMigrationData() },
            { try v.writeMigrationData([1, 2, 3]) },
        ]
        for (i, call) in refused.enumerated() {
            #expect(throws: ClientError.remote(EPERM), "refusal \(i)") { try call() }
        }
        expectAlive(v)
        #expect(device.planes.current() == before)
        #expect(try vmm.read(region: 2, offset: 0x502, count: 2) == [0x20, 0x03])   // 800, as the VMM set it
        #expect(try vmm.read(region: 0, offset: 0, count: 4) == [1, 2, 3, 4])
        #expect(try v.queryPlane(flags: VFIO.gfxPlaneDmabuf).width == 800)
    }

    @Test("a viewer's descriptors show the device's memory and cannot write it")
    func memoryIsReadOnly() throws {
        let s = try LiveServer(try MBochs(type: .small), type: "mbochs-small")
        let d = try LiveDisplay(s)
        let vmm = try s.connect()
        try setBochsMode(vmm, width: 800, height: 600, vram: 4 << 20)
        try vmm.write(region: 0, offset: 0, bytes: [1, 2, 3, 4])
        let v = try d.connect()
        let vram = try v.regionInfo(0)
        let dmabuf = try v.dmabuf(id: try v.queryPlane(flags: VFIO.gfxPlaneDmabuf).id)
        for (what, fd, size) in [("VRAM", vram.fd, Int(vram.size)), ("dmabuf", dmabuf.descriptor.rawValue, Int(dmabuf.size))] {
            #expect(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EACCES, "\(what)")
            #expect(pwrite(fd, [9], 1, 0) == -1, "\(what)")
            let p = try #require(mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0))
            #expect(p != MAP_FAILED && p.load(as: UInt32.self) == 0x0403_0201, "\(what) shows what the guest wrote")
            munmap(p, size)
        }
        #expect(try vmm.read(region: 0, offset: 0, count: 4) == [1, 2, 3, 4])
        // The VMM's own descriptor still maps for writing, as QEMU's does.
        let own = try vmm.regionInfo(0)
        let rw = mmap(nil, Int(own.size), PROT_READ | PROT_WRITE, MAP_SHARED, own.fd, 0)
        #expect(rw != MAP_FAILED)
        if let rw, rw != MAP_FAILED { munmap(rw, Int(own.size)) }
    }

    @Test("two viewers at once while the VMM keeps writing registers")
    func viewersBesideAVMM() async throws {
        let s = try LiveServer(try MBochs(type: .medium), type: "mbochs-medium")
        let d = try LiveDisplay(s)
        let vmm = try s.connect()
        try setBochsMode(vmm, width: 640, height: 480)
        let bar0 = try DisplayServerTests.Mapping(vmm, region: 0)
        // Two buffers the guest flips between, each holding its own pattern.
        TestPattern.drawXRGB(into: bar0.base, width: 640, height: 480, stride: 2560, seed: 1)
        TestPattern.drawXRGB(into: bar0.base + 480 * 2560, width: 640, height: 480, stride: 2560, seed: 2)
        let expected = [0: TestPattern.image(width: 640, height: 480, seed: 1), 480 * 2560: TestPattern.image(width: 640, height: 480, seed: 2)]
        let stop = Flag()
        let guest = Unchecked(vmm)
        let flips = Task.detached {
            var n = 0
            while !stop.isSet {
                try guest.value.write16(region: 2, offset: 0x512, n % 2 == 0 ? 480 : 0)
                n += 1
            }
            return n
        }
        let socket = Unchecked(d)
        let viewers = (0..<2).map { _ in
            Task.detached { () throws -> (frames: Int, wrong: Int) in
                let c = try socket.value.connect()
                let mapping = try PlaneMapping(client: c)
                var frames = 0, wrong = 0
                for _ in 0..<60 {
                    guard let f = try mapping.refresh() else { continue }
                    // A frame shows one of the two buffers whole (the guest
                    // does not redraw them, so the pixels can be compared).
                    let image = PixelFormat.rgb(f)
                    if image != expected[0] && image != expected[480 * 2560] { wrong += 1 }
                    frames += 1
                }
                return (frames, wrong)
            }
        }
        var results: [(frames: Int, wrong: Int)] = []
        for v in viewers { results.append(try await v.value) }
        stop.set()
        let writes = try await flips.value
        #expect(writes > 50)
        for r in results { #expect(r.frames == 60 && r.wrong == 0) }
        #expect(d.server.viewerCount <= 2)
    }

    @Test("a viewer that leaves mid-message disturbs neither the device nor other viewers")
    func viewerLeavesMidMessage() throws {
        let device = try MBochs(type: .small)
        let s = try LiveServer(device, type: "mbochs-small")
        let d = try LiveDisplay(s)
        let vmm = try s.connect()
        try setBochsMode(vmm, width: 800, height: 600, vram: 4 << 20)
        let steady = try d.connect()
        let planeBefore = try steady.queryPlane(flags: VFIO.gfxPlaneDmabuf)
        for cut in [3, 16, 20] {
            let rude = try d.connect()
            let query = rawMessage(id: 99, command: Command.queryGfxPlane.rawValue, payload: le32(64) + le32(VFIO.gfxPlaneDmabuf) + le32(1) + [UInt8](repeating: 0, count: 52))
            try rude.sendRaw(Array(query[0..<cut]))
            shutdown(rude.socket, Int32(SHUT_RDWR))   // gone mid-message; the descriptor closes with the client
        }
        #expect(try steady.queryPlane(flags: VFIO.gfxPlaneDmabuf) == planeBefore)
        #expect(try vmm.read(region: 2, offset: 0x502, count: 2) == [0x20, 0x03])
        try vmm.write16(region: 2, offset: 0x512, 10)
        #expect(try steady.queryPlane(flags: VFIO.gfxPlaneDmabuf).id != planeBefore.id)
        #expect(d.server.waitForViewers(atMost: 1, timeout: 10))
        #expect(d.server.viewerCount == 1)
    }
}

/// Hands a value that is used by one task at a time to another task.
final class Unchecked<T>: @unchecked Sendable {
    // @unchecked: the test passes the value on and stops using it.
    let value: T
    init(_ value: T) { self.value = value }
}

/// A flag one task sets and another polls.
final class Flag: @unchecked Sendable {
    // @unchecked: guarded by the lock.
    private var value = false
    private let lock = NSLock()
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}
