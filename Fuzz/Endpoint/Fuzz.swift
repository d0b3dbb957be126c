// libFuzzer target: a sequence of messages, each with some descriptors,
// fed to an endpoint over a socketpair, as a client would send them, for
// the test device, mtty-2 and the display devices. The endpoint must
// answer or refuse each one and end when the client closes; the process
// must never trap, leak descriptors or hang.
//
// Input: byte 0 picks the device; then records
//   [descriptors u8] [length u16 LE] [bytes]
// sent with one sendmsg each; descriptors (eventfds, or a 64 KiB memfd
// when bit 7 is set) are attached to the record's first byte.
import CShim
import FuzzDriver
import Glibc
import Logging
import MBochs
import MDPY
import MTTY
import PCI
import TestDevice
import VFIOUserServer

nonisolated(unsafe) let hosts: [DeviceHost] = {
    [
        DeviceHost(device: try! TestDevice(mappable: true), typeName: "test"),
        DeviceHost(device: try! TestDevice(mappable: false), typeName: "test-nommap"),
        DeviceHost(device: try! MTTY(ports: 2), typeName: "mtty-2"),
        DeviceHost(device: try! MDPY(type: MDPYType.all[0]), typeName: "mdpy-vga"),
        DeviceHost(device: try! MBochs(type: MBochsType.all[0]), typeName: "mbochs-small"),
    ]
}()

nonisolated(unsafe) let quiet: Logger = {
    var l = Logger(label: "fuzz") { _ in SwiftLogNoOpLogHandler() }
    l.logLevel = .critical
    return l
}()

/// Reads and discards what the endpoint sends until it closes.
final class Drain {
    let fd: Int32
    var thread = pthread_t()
    init(_ fd: Int32) {
        self.fd = fd
        let me = Unmanaged.passRetained(self)
        pthread_create(&thread, nil, { arg in
            let d = Unmanaged<Drain>.fromOpaque(arg!).takeRetainedValue()
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while buffer.withUnsafeMutableBytes({ recv(d.fd, $0.baseAddress, $0.count, 0) }) > 0 {}
            return nil
        }, me.toOpaque())
    }
    func join() { pthread_join(thread, nil) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEndpoint(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let host = hosts[Int(data[0]) % hosts.count]
    var pair: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return 0 }
    let client = pair[0], server = pair[1]
    // The whole input is queued before the endpoint runs: make room for it.
    var big: Int32 = 4 << 20
    setsockopt(client, SOL_SOCKET, SO_SNDBUF, &big, 4)
    setsockopt(server, SOL_SOCKET, SO_RCVBUF, &big, 4)
    var at = 1
    while at + 3 <= size {
        let wanted = Int(data[at] & 0x0f), memfd = data[at] & 0x80 != 0
        let length = min(Int(data[at + 1]) | Int(data[at + 2]) << 8, size - at - 3)
        at += 3
        guard length > 0 else { continue }
        var fds: [Int32] = []
        for i in 0..<wanted {
            if memfd && i == 0 {
                let m = umdev_memfd("fuzz-ram")
                if m >= 0 { _ = ftruncate(m, 1 << 16); fds.append(m) }
            } else {
                let e = umdev_eventfd(0)
                if e >= 0 { fds.append(e) }
            }
        }
        let sent = fds.withUnsafeBufferPointer { umdev_sendmsg(client, data + at, length, $0.baseAddress, Int32($0.count)) }
        for fd in fds { close(fd) }
        if sent < 0 { break }
        at += length
    }
    shutdown(client, Int32(SHUT_WR))
    let drain = Drain(client)
    let endpoint = Endpoint(host: host, socket: server, logger: quiet, stallTimeout: 0.05)
    endpoint.run()
    close(server)
    drain.join()
    close(client)
    host.resetDevice()
    return 0
}

@_cdecl("fuzz_endpoint_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in fuzzEndpoint(data, size) }
}
