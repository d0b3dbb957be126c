// libFuzzer target: any bytes as one message. Decoding must return a
// request or an error, never trap; the same for the VERSION JSON parsers.
//
// Input: byte 0 = descriptor count (mod 17) and, in its top bit, "also parse
// the payload as VERSION JSON"; then a 16-byte header and the payload.
import FuzzDriver
import VFIOUser

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCodec(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 + Header.size else { return 0 }
    let fdCount = Int(data[0] & 0x1f) % 17
    let message = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let header = Header(message.baseAddress!)
    let payload = UnsafeRawBufferPointer(rebasing: message[Header.size...])
    _ = try? Request.decode(header, payload: payload, fdCount: fdCount)
    if data[0] & 0x80 != 0 {
        _ = try? Capabilities.parse(json: payload)
        _ = try? JSONParser.parse(payload)
    }
    return 0
}

@_cdecl("fuzz_codec_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runLibFuzzer(argc, argv) { data, size in fuzzCodec(data, size) }
}
