import Glibc
import MBochs
import MDPY
import MTTY
import PCI
import TestDevice
import Testing

/// Found by fuzz-devices: MBochs copied from VRAM at any offset it was
/// given (a read at 0xfcfcfcfc of mbochs-small's 4 MiB BAR0 ran off the
/// mapping). The server checks ranges first; a model now checks again.
@Suite("device models refuse accesses outside their regions")
struct DeviceBoundsTests {
    static func models() throws -> [(String, VFIODevice)] {
        [("test", try TestDevice(mappable: true)), ("mtty-2", try MTTY(ports: 2)),
         ("mdpy-vga", try MDPY(type: MDPYType.all[0])), ("mbochs-small", try MBochs(type: MBochsType.all[0]))]
    }

    @Test("fuzz-devices crash-440dd5b9: mbochs-small read of BAR0 at 0xfcfcfcfc")
    func fuzzCrashRegression() throws {
        let bochs = try MBochs(type: MBochsType.all[0])
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 8)
        defer { buffer.deallocate() }
        #expect(bochs.read(region: 0, offset: 0xfcfc_fcfc, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<1])) == EINVAL)
        #expect(bochs.write(region: 0, offset: 0xfcfc_fcfc, data: UnsafeRawBufferPointer(rebasing: buffer[0..<1])) == EINVAL)
    }

    @Test("every model: past the end, straddling it, a huge offset, an unknown region")
    func everyModel() throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 8)
        defer { buffer.deallocate() }
        let four = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<4])
        for (name, device) in try Self.models() {
            for (index, region) in device.regions.enumerated() {
                #expect(device.read(region: index, offset: region.size, into: four) == EINVAL, "\(name) \(index)")
                #expect(device.read(region: index, offset: UInt64.max - 1, into: four) == EINVAL, "\(name) \(index)")
                #expect(device.write(region: index, offset: UInt64.max, data: UnsafeRawBufferPointer(four)) == EINVAL, "\(name) \(index)")
                if region.size >= 4 {
                    #expect(device.read(region: index, offset: region.size - 2, into: four) == EINVAL, "\(name) \(index)")
                }
                if region.size >= 4 && region.readable {
                    // Inside, the model's own rules apply (mtty's registers are bytes, the EDID
                    // region's fields are dwords and its blob ends before the region does): some
                    // of these reads are served, and any refusal is EINVAL, never another errno.
                    let one = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<1])
                    let results = [device.read(region: index, offset: 0, into: one), device.read(region: index, offset: 0, into: four),
                                   device.read(region: index, offset: region.size - 1, into: one),
                                   device.read(region: index, offset: region.size - 4, into: four)]
                    #expect(results.contains(0), "\(name) \(index): no read inside is served")
                    #expect(results.allSatisfy { $0 == 0 || $0 == EINVAL }, "\(name) \(index): \(results)")
                }
            }
            #expect(device.read(region: device.regions.count, offset: 0, into: four) == EINVAL, "\(name)")
            #expect(device.read(region: -1, offset: 0, into: four) == EINVAL, "\(name)")
        }
    }
}
