// libFuzzer target: any bytes as a handover from another process. Decoding
// must return a handover or an error, never trap; what decodes must encode
// to the same bytes, and so must each section the decoder checks.
//
// Input: byte 0 = how many descriptors came with it (mod 64; bit 6 set: the
// bytes are a state memfd's, Protocol/HANDOVER.md "Kept in the fd store",
// and the copy its header names is the handover), then the bytes.
import FuzzDriver
import Handover

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHandover(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let descriptors = Int(data[0] % 64)
    var bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    if data[0] & 0x40 != 0 {
        guard let copy = try? StateKeeper.copy(inFile: bytes) else { return 0 }
        bytes = copy
    }
    if let h = try? Handover.decode(bytes, descriptorCount: descriptors) {
        precondition(h.encode() == bytes, "a handover that decodes encodes to other bytes")
        // Each device and connection section the decoder accepted reads as
        // the same fields when written again.
        for s in h.sections(.device) {
            precondition((try? DeviceSection(s.payload, descriptorCount: descriptors))?.section.payload == s.payload,
                         "a device section encodes to other bytes")
        }
        for s in h.sections(.connection) {
            precondition((try? ConnectionSection(s.payload, descriptorCount: descriptors))?.section.payload == s.payload,
                         "a connection section encodes to other bytes")
        }
        for s in h.sections(.daemon) {
            precondition((try? DaemonSection(s.payload, descriptorCount: descriptors))?.section.payload == s.payload,
                         "a daemon section encodes to other bytes")
        }
        for s in h.sections(.instance) {
            precondition((try? InstanceSection(s.payload))?.section.payload == s.payload, "an instance section encodes to other bytes")
        }
        for s in h.sections(.host) {
            precondition((try? HostSection(s.payload, descriptorCount: descriptors))?.section.payload == s.payload,
                         "a host section encodes to other bytes")
        }
        for s in h.sections(.migration) {
            precondition((try? MigrationSection(s.payload))?.section.payload == s.payload, "a migration section encodes to other bytes")
        }
        for s in h.sections(.display) {
            precondition((try? DisplaySection(s.payload, descriptorCount: descriptors))?.section.payload == s.payload,
                         "a display section encodes to other bytes")
        }
    }
    return 0
}

@_cdecl("fuzz_handover_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in fuzzHandover(data, size) }
}
