import MBochs
import MDPY
import MTTY
import PCI
import TestDevice

/// A device type umdev can serve, as mdev lists them.
struct DeviceType: Sendable {
    var name: String
    var description: String
    var deviceAPI = "vfio-pci"
    /// Whether the type shows a picture, and how a client gets it.
    var display: DisplayPlane.Kind? = nil
    /// Builds an instance; `backends` are the per-port serial backends (mtty only).
    var make: @Sendable (_ backends: [SerialBackend]) throws -> VFIODevice

    static let all: [DeviceType] = [
        DeviceType(name: "test", description: "Protocol test device (BAR0 trapped MMIO, BAR1 mmap-able memfd, BAR2 I/O, INTx/MSI/MSI-X)") {
_ in
            try TestDevice(mappable: true)
        },
        DeviceType(name: "test-nommap", description: "Protocol test device with every BAR trapped (QEMU posts MMIO writes to it)") {
_ in
            try TestDevice(mappable: false)
        },
        DeviceType(name: "mtty-1", description: "Single port serial") { try MTTY(ports: 1, backends: $0) },
        DeviceType(name: "mtty-2", description: "Dual port serial") { try MTTY(ports: 2, backends: $0) },
    ] + MDPYType.all.map { t in
        DeviceType(name: t.name, description: t.description, display: .region) { _ in try MDPY(type: t) }
    } + MBochsType.all.map { t in
        DeviceType(name: t.name, description: t.description, display: .dmabuf) { _ in try MBochs(type: t) }
    }

    static func named(_ name: String) -> DeviceType? { all.first { $0.name == name } }
}
