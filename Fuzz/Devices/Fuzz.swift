// libFuzzer target: each device model driven by random region accesses at
// random widths and offsets (in and out of range), with its invariants
// checked after every access:
//   mtty    no receive FIFO holds more than 16 bytes; IIR reads one valid cause
//   mbochs  an enabled plane lies inside VRAM; mdpy's plane inside its framebuffer
//   all     an access either succeeds or fails with an errno, never traps
//
// Input: byte 0 picks the device; then 12-byte accesses
//   [kind][region][width][time step] [offset u32] [value u32]
// where kind bit 0 = write, bit 1 = let mtty's clock run (receive timeouts).
import FuzzDriver
import Glibc
import MBochs
import MDPY
import MTTY
import PCI
import TestDevice

nonisolated(unsafe) var now: UInt64 = 1_000_000_000

/// One instance of each model, made once (VRAM memfds are sparse).
nonisolated(unsafe) let devices: [VFIODevice] = {
    var d: [VFIODevice] = []
    d.append(try! TestDevice(mappable: true))
    d.append(try! MTTY(ports: 2, clock: { now }))
    d.append(try! MTTY(ports: 1, clock: { now }))
    d.append(try! MDPY(type: MDPYType.all[0]))
    d.append(try! MBochs(type: MBochsType.all[0]))
    d.append(try! MBochs(type: MBochsType.all[2], edidMax: (0, 0)))
    return d
}()

nonisolated(unsafe) let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 8)

func checkInvariants(_ device: VFIODevice) {
    if let m = device as? MTTY {
        for port in m.ports {
            precondition(port.receive.count <= UART16550.fifoSize, "mtty receive FIFO above 16 bytes")
            var copy = port
            let iir = copy.read(UART16550.Register.interruptIdentification, now: now)
            let cause = iir & 0x0f
            precondition([UART16550.iirNone, UART16550.iirModemStatus, UART16550.iirTransmitEmpty, UART16550.iirReceivedData,
                          UART16550.iirLineStatus, UART16550.iirTimeout].contains(cause), "IIR cause \(cause) is not one cause")
            precondition(iir & 0x30 == 0 && (iir & 0xc0 == 0 || iir & 0xc0 == 0xc0), "IIR reserved bits set")
        }
    }
    if let display = device as? DisplayDevice {
        let plane = display.planes.current()
        if plane.isEnabled {
            let memory = UInt64(display.planeMemory.size)
            precondition(plane.offset + plane.size <= memory, "plane \(plane) outside its memory of \(memory) bytes")
            precondition(UInt64(plane.stride) * UInt64(plane.height) <= plane.size, "plane size below stride × height")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDevices(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let device = devices[Int(data[0]) % devices.count]
    device.reset()
    var at = 1
    while at + 12 <= size {
        let kind = data[at], region = Int(data[at + 1]) % max(1, device.regions.count + 1)
        let width = [1, 2, 4, 8][Int(data[at + 2]) % 4]
        let step = UInt64(data[at + 3])
        var offset: UInt32 = 0, value: UInt32 = 0
        memcpy(&offset, data + at + 4, 4)
        memcpy(&value, data + at + 8, 4)
        at += 12
        if kind & 2 != 0 { now += step * 50_000; if let deadline = device.timerDeadline, now >= deadline { device.timerExpired() } }
        // Offsets near the ends of small regions matter most: fold most of them in.
        let size = region < device.regions.count ? device.regions[region].size : 0
        let o = kind & 4 != 0 || size == 0 ? UInt64(offset) : UInt64(offset) % (size + 16)
        let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<width])
        if kind & 1 != 0 {
            buffer.storeBytes(of: UInt64(value) | UInt64(value) << 32, toByteOffset: 0, as: UInt64.self)
            _ = device.write(region: region, offset: o, data: UnsafeRawBufferPointer(buffer))
        } else {
            _ = device.read(region: region, offset: o, into: buffer)
        }
        checkInvariants(device)
    }
    return 0
}

@_cdecl("fuzz_devices_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in fuzzDevices(data, size) }
}
