import MTTY
import PCI
import TestDevice

/// A device type umdev can serve, as mdev lists them.
struct DeviceType: Sendable {
    var name: String
    var description: String
    var deviceAPI = "vfio-pci"
    var make: @Sendable () throws -> VFIODevice

    static let all: [DeviceType] = [
        DeviceType(name: "test", description: "Protocol test device (BAR0 trapped MMIO, BAR1 mmap-able memfd, BAR2 I/O, INTx/MSI/MSI-X)") {
            try TestDevice(mappable: true)
        },
        DeviceType(name: "test-nommap", description: "Protocol test device with every BAR trapped (QEMU posts MMIO writes to it)") {
            try TestDevice(mappable: false)
        },
    ]

    static func named(_ name: String) -> DeviceType? { all.first { $0.name == name } }
}
