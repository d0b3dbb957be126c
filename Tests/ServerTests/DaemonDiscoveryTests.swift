import Foundation
import Glibc
import Lifecycle
import MTTY
import PCI
import Testing
import UnixSocket
import VFIOUser
import VFIOUserClient
import VFIOUserServer

/// QEMU's capabilities with umdev's plane key: what a VMM that also shows the display would propose.
let migrationAndPlaneJSON =
    #"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true, "x-umdev-gfx-plane": {"version": 1}}}"#

@Suite("lifecycle daemon: discovery without opening", .serialized)
struct DaemonDiscoveryTests {
    @Test("what types and list describe is what every type answers once a client connects")
    func discoveryMatchesTheDevice() throws {
        let d = try TestDaemon()
        let types = try #require(try d.request("types").types)
        #expect(types.map(\.id) == Catalog.all.map(\.id))
        for t in types {
            let i = try d.start(t.id)
            let profile = try #require(i.device)
            #expect(profile == t.device, "\(t.id): the running instance and its type describe it alike")
            #expect(t.deviceAPI == "vfio-pci" && profile.deviceAPI == "vfio-pci")
            try expectMatches(profile, socket: i.socket, type: t.id)
        }
        // A creation attribute that changes what a client sees shows in the instance's description.
        let limited = try d.start("mbochs-small", attrs: [("edid_max", "640x480")])
        let profile = try #require(limited.device)
        #expect(profile.display == DisplayInfo(kind: "dmabuf", edid: true, maxWidth: 640, maxHeight: 480))
        #expect(profile.migration?.parameters == ["vram_mib": "4", "edid_max": "640x480"])
        try expectMatches(profile, socket: limited.socket, type: "mbochs-small")
    }

    func expectMatches(_ p: DeviceProfile, socket: String, type: String) throws {
        let c = try VFIOUserClient(path: socket)
        let caps = try c.negotiate(json: migrationAndPlaneJSON)
        let info = try c.deviceInfo()
        #expect(info.isPCI, "\(type)")
        #expect(info.supportsReset == p.reset, "\(type)")
        #expect(Int(info.regionCount) == p.regions.count, "\(type)")
        #expect(Int(info.irqCount) == p.irqs.count, "\(type)")
        var edidRegion: UInt32?
        for r in p.regions {
            let got = try c.regionInfo(UInt32(r.index))
            #expect(got.size == r.size, "\(type) region \(r.index)")
            #expect(got.readable == r.flags.contains("read") && got.writable == r.flags.contains("write")
                    && got.mappable == r.flags.contains("mmap"), "\(type) region \(r.index) flags")
            #expect(got.type?.type == r.type && got.type?.subtype == r.subtype, "\(type) region \(r.index) type")
            if r.type == 1 && r.subtype == 1 { edidRegion = UInt32(r.index) }
        }
        let irqFlags: [(UInt32, String)] = [(VFIO.irqInfoEventfd, "eventfd"), (VFIO.irqInfoMaskable, "maskable"),
                                            (VFIO.irqInfoAutomasked, "automasked"), (VFIO.irqInfoNoResize, "noresize")]
        for q in p.irqs {
            let got = try c.irqInfo(UInt32(q.index))
            #expect(got.count == q.count, "\(type) irq \(q.index)")
            #expect(irqFlags.filter { got.flags & $0.0 != 0 }.map(\.1) == q.flags, "\(type) irq \(q.index) flags")
        }
        let config = try c.read(region: 7, offset: 0, count: 48)
        func u16(_ o: Int) -> UInt16 { UInt16(config[o]) | UInt16(config[o + 1]) << 8 }
        #expect(u16(0) == p.vendorID && u16(2) == p.deviceID && u16(0x2c) == p.subsystemVendorID && u16(0x2e) == p.subsystemID, "\(type)")
        #expect(UInt32(config[11]) << 16 | UInt32(config[10]) << 8 | UInt32(config[9]) == p.classCode && config[8] == p.revision, "\(type)")
        // Migration: offered, and the stream's identity is the one described.
        #expect((caps.migration != nil) == (p.migration != nil), "\(type)")
        if let m = p.migration {
            try c.setMigrationState(.stopCopy)
            let stream = try c.readMigrationData()
            try c.setMigrationState(.running)
            let identity = try MigrationMachine.header(stream).0
            #expect(identity == MigrationIdentity(model: m.model, version: m.version, type: type, parameters: m.parameters), "\(type)")
        }
        // Display: the plane PROBE, and the EDID's limits.
        let kind = try c.probePlaneKind()
        #expect((kind == .region ? "region" : kind == .dmabuf ? "dmabuf" : "none") == p.display.kind, "\(type)")
        #expect((edidRegion != nil) == p.display.edid, "\(type)")
        if let edidRegion {
            #expect(Int(try c.read32(region: edidRegion, offset: 0x0c)) == p.display.maxWidth, "\(type)")
            #expect(Int(try c.read32(region: edidRegion, offset: 0x10)) == p.display.maxHeight, "\(type)")
        }
    }
}

@Suite("lifecycle daemon: versions and compatibility", .serialized)
struct DaemonCompatTests {
    /// A stream with `identity` and `body`, as a device writes them.
    func stream(_ identity: MigrationIdentity, _ body: [UInt8]) -> [UInt8] {
        var s = MigrationMachine.preamble(identity)
        for i in 0..<4 { s.append(UInt8(truncatingIfNeeded: UInt32(body.count) >> (8 * UInt32(i)))) }
        return s + body
    }

    func file(_ d: TestDaemon, _ bytes: [UInt8]) throws -> String {
        let path = d.root + "/state-\(UInt32.random(in: 0...UInt32.max))"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// compat from a file to a running instance, and migrate-load of the
    /// same file into it: (compat's reason or nil, load's error or nil).
    func check(_ d: TestDaemon, _ path: String, into uuid: String) throws -> (compat: String?, load: LifecycleError?) {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var c = ControlRequest("compat")
        c.to = uuid
        let compat = try d.call(c, descriptor: fd)
        #expect(compat.ok && compat.compatible == (compat.reason == nil))
        var l = ControlRequest("migrate-load")
        l.uuid = uuid
        let load = try d.call(l, descriptor: fd)
        return (compat.reason, load.error)
    }

    @Test("compat answers same, older, newer, other model, other type, other port count; resume refuses exactly those, for the same reason")
    func compatAndResumeAgree() throws {
        let d = try TestDaemon()
        let source = try d.start("mtty-1")
        let same = try d.start("mtty-1")
        let dual = try d.start("mtty-2")
        let display = try d.start("mdpy-vga")
        let saved = d.root + "/saved"
        let fd = open(saved, O_RDWR | O_CREAT, 0o600)
        var save = ControlRequest("migrate-save")
        save.uuid = source.uuid
        let answer = try d.call(save, descriptor: fd)
        close(fd)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: saved)))
        #expect(answer.ok && answer.bytes == bytes.count)
        let (identity, v2) = try MigrationMachine.unwrap(bytes)
        #expect(identity == MigrationIdentity(model: "umdev.mtty", version: 2, type: "mtty-1", parameters: ["ports": "1"]))

        // Version 1's layout: the same state without the 8-byte idle time.
        var v1 = Array(v2[0..<7]) + Array(v2[7..<(7 + MTTY.portStateSize)]) + Array(v2[(7 + MTTY.portStateSize + 8)...])
        v1[4] = 1
        var older = identity; older.version = 1
        var ancient = identity; ancient.version = 0
        var newer = identity; newer.version = 3
        var otherModel = identity; otherModel.model = "acme.uart"

        let cases: [(String, [UInt8], String, String?)] = [
            ("same", bytes, same.uuid, nil),
            ("older, still read", stream(older, v1), same.uuid, nil),
            ("older than read", stream(ancient, v1), same.uuid, "state version 0 is older than the oldest this umdev reads (1)"),
            ("newer", stream(newer, v2), same.uuid, "state version 3 is newer than the newest this umdev reads (2)"),
            ("other model", stream(otherModel, v2), same.uuid, "other device model: the state is acme.uart (mtty-1), this device is umdev.mtty (mtty-1)"),
            ("other type", bytes, display.uuid, "other device model: the state is umdev.mtty (mtty-1), this device is umdev.mdpy (mdpy-vga)"),
            ("other port count", bytes, dual.uuid, "ports differs: the state has 1, this device 2"),
        ]
        for (name, s, target, expected) in cases {
            let (reason, loadError) = try check(d, try file(d, s), into: target)
            #expect(reason == expected, "\(name)")
            if let expected {
                #expect(loadError == LifecycleError(.incompatible, expected), "\(name): resume refuses with compat's reason")
            } else {
                #expect(loadError == nil, "\(name): resume accepts what compat accepts")
            }
        }
        // A refused resume left the target running, able to take a good state.
        #expect(try check(d, saved, into: dual.uuid).load?.code == "incompatible")
        #expect(try check(d, saved, into: same.uuid).load == nil)
    }

    @Test("compat between instances and types; creation parameters that shape the guest decide, host-side ones do not")
    func instancesAndTypes() throws {
        let d = try TestDaemon()
        let a = try d.start("mtty-2", attrs: [("port0", "pty")])
        let b = try d.start("mtty-2")
        let small = try d.start("mbochs-small")
        func compat(_ fill: (inout ControlRequest) -> Void) throws -> ControlResponse {
            var r = ControlRequest("compat")
            fill(&r)
            return try d.call(r)
        }
        // A pty on the source and loopback on the target: the guest sees the same device.
        var r = try compat { $0.from = a.uuid; $0.to = b.uuid }
        #expect(r.compatible == true && r.reason == nil)
        #expect(r.source == MigrationIdentity(model: "umdev.mtty", version: 2, type: "mtty-2", parameters: ["ports": "2"]))
        r = try compat { $0.from = a.uuid; $0.type = "mtty-1" }
        #expect(r.compatible == false && r.reason == "ports differs: the state has 2, this device 1")
        r = try compat { $0.from = small.uuid; $0.type = "mbochs-small" }
        #expect(r.compatible == true)
        r = try compat { $0.from = small.uuid; $0.type = "mbochs-small"; $0.attrs = Attributes([("edid_max", "640x480")]) }
        #expect(r.reason == "edid_max differs: the state has 800x600, this device 640x480")
        r = try compat { $0.from = small.uuid; $0.type = "mbochs-medium" }
        #expect(r.reason?.hasPrefix("edid_max differs") == true || r.reason?.hasPrefix("vram_mib differs") == true)
        r = try compat { $0.from = small.uuid; $0.type = "mdpy-vga" }
        #expect(r.reason?.hasPrefix("other device model") == true)
        // Bad questions are errors, not answers.
        #expect(try compat { $0.to = b.uuid }.error?.code == "invalid")
        #expect(try compat { $0.from = a.uuid }.error?.code == "invalid")
        #expect(try compat { $0.from = a.uuid; $0.type = "nope" }.error?.code == "not-found")
        #expect(try compat { $0.from = a.uuid; $0.to = b.uuid; $0.attrs = Attributes([("label", "x")]) }.error?.code == "invalid")
        let junk = try file(d, Array("not a state".utf8))
        let fd = open(junk, O_RDONLY)
        defer { close(fd) }
        var j = ControlRequest("compat")
        j.type = "mtty-2"
        #expect(try d.call(j, descriptor: fd).error?.code == "invalid")
    }

    @Test("migrate-save and migrate-load carry a device's state between instances")
    func saveAndLoad() throws {
        let d = try TestDaemon()
        let a = try d.start("mtty-1")
        let b = try d.start("mtty-1")
        do {
            let c = try VFIOUserClient(path: a.socket)
            try c.negotiate()
            try c.write8(region: 0, offset: 7, 0xa5)          // scratch register
            #expect(leave(c, instance: a.uuid, of: d))
        }
        let path = d.root + "/a.state"
        let out = open(path, O_WRONLY | O_CREAT, 0o600)
        var save = ControlRequest("migrate-save")
        save.uuid = a.uuid
        #expect(try d.call(save, descriptor: out).ok)
        close(out)
        let input = open(path, O_RDONLY)
        var load = ControlRequest("migrate-load")
        load.uuid = b.uuid
        #expect(try d.call(load, descriptor: input).ok)
        close(input)
        let c = try VFIOUserClient(path: b.socket)
        try c.negotiate()
        #expect(try c.read8(region: 0, offset: 7) == 0xa5)
        // The descriptor must be a regular file open the right way.
        var p: [Int32] = [0, 0]
        pipe(&p)
        defer { close(p[0]); close(p[1]) }
        var busy = ControlRequest("migrate-save")
        busy.uuid = b.uuid
        #expect(try d.call(busy, descriptor: p[1]).error?.message == "the descriptor must be a regular file")
        let ro = open(path, O_RDONLY)
        defer { close(ro) }
        #expect(try d.call(busy, descriptor: ro).error?.message == "the file is not open for writing")
        #expect(try d.call(busy).error?.code == "invalid")
        // A client holds b: its VMM migrates it, not the daemon.
        let wo = open(path, O_WRONLY)
        defer { close(wo) }
        #expect(try d.call(busy, descriptor: wo).error?.code == "busy")
    }
}
