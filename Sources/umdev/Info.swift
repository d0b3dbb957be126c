import ArgumentParser
import Glibc
import VFIOUser
import VFIOUserClient

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Connect to a vfio-user server and describe what it offers.")

    @Option(name: .long, help: "UNIX socket path of the server.")
    var socket: String

    func run() throws {
        let client = try VFIOUserClient(path: socket)
        let caps = try client.negotiate()
        let info = try client.deviceInfo()
        print("server \(socket)")
        print("  version 0.0, capabilities \(client.serverVersionJSON)")
        print("    max_msg_fds \(caps.maxMessageFDs), max_data_xfer_size \(caps.maxDataTransferSize), pgsizes 0x\(String(caps.pageSizes, radix: 16)), max_dma_maps \(caps.maxDMAMaps)")
        print("    migration \(caps.migration != nil ? "yes" : "no"), write_multiple \(caps.writeMultiple ? "yes" : "no")")
        var flags: [String] = []
        if info.isPCI { flags.append("PCI") }
        if info.supportsReset { flags.append("RESET") }
        print("device: \(flags.joined(separator: "|")), \(info.regionCount) regions, \(info.irqCount) IRQ indices")
        if info.isPCI, info.regionCount > 7 {
            let id = try client.read(region: UInt32(RegionIndex.config), offset: 0, count: 16)
            func hex(_ v: Int, _ w: Int) -> String { let s = String(v, radix: 16); return String(repeating: "0", count: max(0, w - s.count)) + s }
            let vendor = Int(id[0]) | Int(id[1]) << 8, device = Int(id[2]) | Int(id[3]) << 8
            let cls = Int(id[11]) << 16 | Int(id[10]) << 8 | Int(id[9])
            print("  PCI \(hex(vendor, 4)):\(hex(device, 4)) class \(hex(cls, 6)) rev \(hex(Int(id[8]), 2))")
        }
        print("regions:")
        let names = ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"]
        for i in 0..<info.regionCount {
            let r = try client.regionInfo(i)
            let name = Int(i) < names.count ? names[Int(i)] : r.type.map { $0 == (1, 1) ? "EDID" : "DEVICE-SPECIFIC" } ?? "REGION"
            if r.size == 0 { print("  \(i) \(name): absent"); continue }
            var access: [String] = []
            if r.readable { access.append("read") }
            if r.writable { access.append("write") }
            if r.mappable { access.append("mmap") }
            var line = "  \(i) \(name): \(r.size) bytes, \(access.joined(separator: "|"))"
            if !r.sparseAreas.isEmpty {
                line += ", mappable areas " + r.sparseAreas.map { "[0x\(String($0.offset, radix: 16))+0x\(String($0.size, radix: 16))]" }.joined(separator: " ")
            }
            if let t = r.type { line += ", type \(regionTypeName(t))" }
            if r.fd >= 0 { line += ", fd offset 0x\(String(r.offset, radix: 16))" }
            print(line)
        }
        print("irqs:")
        let irqNames = ["INTx", "MSI", "MSI-X", "ERR", "REQ"]
        for i in 0..<info.irqCount {
            let q = try client.irqInfo(i)
            var f: [String] = []
            if q.flags & VFIO.irqInfoEventfd != 0 { f.append("eventfd") }
            if q.flags & VFIO.irqInfoMaskable != 0 { f.append("maskable") }
            if q.flags & VFIO.irqInfoAutomasked != 0 { f.append("automasked") }
            if q.flags & VFIO.irqInfoNoResize != 0 { f.append("noresize") }
            let name = Int(i) < irqNames.count ? irqNames[Int(i)] : "index \(i)"
            print("  \(i) \(name): \(q.count) vector\(q.count == 1 ? "" : "s")\(f.isEmpty ? "" : ", " + f.joined(separator: "|"))")
        }
        if caps.migration != nil {
            if let d = try? client.feature(VFIO.featureMigration, flags: VFIO.featureGet), d.count >= 8 {
                var m: [String] = []
                if d[0] & 1 != 0 { m.append("STOP_COPY") }
                if d[0] & 4 != 0 { m.append("PRE_COPY") }
                print("migration: \(m.joined(separator: "|")), state \(try client.migrationState().name)")
            }
        }
    }
}

/// A TYPE capability as text: the kernel's names where it has them.
func regionTypeName(_ t: (type: UInt32, subtype: UInt32)) -> String {
    switch t {
    case (1, 1): return "GFX/EDID (1/1)"
    case (1, let sub): return "GFX/\(sub) (1/\(sub))"
    case (let type, let sub) where type & 0x8000_0000 != 0:
        let vendor = String(type & 0xffff, radix: 16)
        return "vendor \(String(repeating: "0", count: 4 - vendor.count) + vendor)/\(sub) (0x\(String(type, radix: 16))/\(sub))"
    default: return "\(t.type)/\(t.subtype)"
    }
}
