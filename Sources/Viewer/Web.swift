import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Locking

/// A web page showing devices' screens live, side by side, with each
/// plane's facts: one HTML file (a package resource, no build step, nothing
/// fetched) served over HTTP, and frames over a WebSocket at /ws.
///
/// Each device's watcher thread calls `publish`: the tiles that changed are
/// encoded once and offered to every browser. A browser whose connection is
/// not writable (its buffer above the high-water mark) skips frames and is
/// marked stale; when it drains it gets the whole screen from the cache of
/// last-sent tiles, as does a browser that connects late. So a slow or
/// stalled browser costs only its own frames: it never delays another
/// browser, the watcher threads, or the device.
public final class WebOutput: @unchecked Sendable {
    // @unchecked: `state` is behind its lock; the channel and group are
    // NIO's own thread-safe objects; the rest is immutable.

    /// How tiles travel: raw 8-bit RGB, or PNG.
    public enum TileEncoding: String, Sendable, CaseIterable {
        case raw, png
        var code: UInt8 { self == .raw ? 0 : 1 }
    }

    /// One device's facts as the page shows them.
    struct Facts: Encodable {
        var type = "plane"
        var device: Int
        var enabled: Bool
        var kind: String
        var fourcc: String
        var width: Int
        var height: Int
        var stride: Int
        var offset: UInt64
        var id: UInt32
        var fps: Double
    }

    private struct DeviceState {
        var name: String
        var facts: Facts
        var width = 0
        var height = 0
        /// The last tile sent at each place: the whole screen, for late and
        /// lagging browsers.
        var tiles: [Int: ByteBuffer] = [:]
        var framesThisSecond = 0
        var secondStarted = DispatchTime.now().uptimeNanoseconds
    }

    private struct State {
        var devices: [DeviceState]
        var clients: [ObjectIdentifier: WebClient] = [:]
        var bytesQueued: UInt64 = 0
        var framesSkipped: UInt64 = 0
    }

    public let encoding: TileEncoding
    let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    private let state: Locked<State>
    private let page: ByteBuffer
    private var server: Channel?
    /// The port it listens on (useful with port 0).
    public private(set) var port = 0

    /// Serves `devices` (their names) on `host`:`port`.
    public init(host: String, port: Int, devices: [String], encoding: TileEncoding, logger: Logger) throws {
        guard let url = Bundle.module.url(forResource: "viewer", withExtension: "html"),
              let html = try? Data(contentsOf: url) else {
            throw WebFailure(description: "the viewer page is missing from the package's resources")
        }
        self.encoding = encoding
        self.logger = logger
        page = ByteBuffer(bytes: html)
        state = Locked(State(devices: devices.enumerated().map { i, name in
            DeviceState(name: name, facts: Facts(device: i, enabled: false, kind: "", fourcc: "", width: 0, height: 0,
                                                 stride: 0, offset: 0, id: 0, fps: 0))
        }))
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let channel = try ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 16)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 << 10, high: 1 << 20))
                .childChannelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture { try self.configure(channel) }
                }
                .bind(host: host, port: port).wait()
            server = channel
            self.port = channel.localAddress?.port ?? port
        } catch {
            try? group.syncShutdownGracefully()
            throw WebFailure(description: "cannot listen on \(host):\(port): \(error)")
        }
    }

    /// HTTP for the page; an upgrade to WebSocket at /ws.
    private func configure(_ channel: Channel) throws {
        let http = PageHandler(page: page)
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: 1 << 16,
            shouldUpgrade: { channel, head in
                channel.eventLoop.makeSucceededFuture(head.uri == "/ws" ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { [self] channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WebSocketHandler(output: self))
                }
            })
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                context.pipeline.syncOperations.removeHandler(name: PageHandler.name, promise: nil)
            }))
        try channel.pipeline.syncOperations.addHandler(http, name: PageHandler.name)
    }

    /// Stops serving and closes every browser's connection.
    public func stop() {
        try? server?.close().wait()
        let clients = state.withLock { Array($0.clients.values) }
        for c in clients { c.channel.close(promise: nil) }
        try? group.syncShutdownGracefully()
    }

    deinit { if server?.isActive == true { stop() } }

    /// Browsers connected now.
    public var clientCount: Int { state.withLock { $0.clients.count } }
    /// Bytes handed to browsers' connections, and frames skipped for browsers that were not keeping up.
    public var statistics: (bytes: UInt64, skipped: UInt64) { state.withLock { ($0.bytesQueued, $0.framesSkipped) } }

    // MARK: Frames

    /// Offers what a watcher poll found for `device`. Call from that device's thread only.
    public func publish(device: Int, update: ScreenWatcher.Update) {
        let now = DispatchTime.now().uptimeNanoseconds
        var facts: ByteBuffer?
        var delta: ByteBuffer?
        if let frame = update.frame, let pixels = update.pixels {
            let records = update.changed.map { encodeTile($0, pixels: pixels, stride: update.stride) }
            if !records.isEmpty { delta = frameMessage(device: device, width: frame.width, height: frame.height, tiles: records.map(\.record)) }
            facts = state.withLock { s -> ByteBuffer? in
                var d = s.devices[device]
                if update.layoutChanged { d.tiles.removeAll(keepingCapacity: true) }
                for r in records { d.tiles[r.index] = r.record }
                d.width = frame.width
                d.height = frame.height
                if !records.isEmpty { d.framesThisSecond += 1 }
                let layout = Facts(device: device, enabled: true, kind: frame.kind == .region ? "region" : "dmabuf",
                                   fourcc: fourccName(frame.fourcc), width: frame.width, height: frame.height,
                                   stride: frame.stride, offset: frame.offset, id: frame.id, fps: d.facts.fps)
                let changed = update.layoutChanged || layout.id != d.facts.id || layout.offset != d.facts.offset || !d.facts.enabled
                d.facts = layout
                let tick = rollSecond(&d, now: now)
                s.devices[device] = d
                return changed || tick ? encodeFacts(d.facts) : nil
            }
        } else {
            facts = state.withLock { s -> ByteBuffer? in
                var d = s.devices[device]
                let changed = d.facts.enabled
                if changed { d.tiles.removeAll() }
                d.facts.enabled = false
                let tick = rollSecond(&d, now: now)
                s.devices[device] = d
                return changed || tick ? encodeFacts(d.facts) : nil
            }
        }
        guard facts != nil || delta != nil else { return }
        let (text, binary) = (facts, delta)
        for client in state.withLock({ Array($0.clients.values) }) {
            client.channel.eventLoop.execute { [self] in
                if let text { client.send(text: text, output: self) }
                if let binary { client.send(delta: binary, device: device, output: self) }
            }
        }
    }

    /// Once a second: the frame rate of the second that ended.
    private func rollSecond(_ d: inout DeviceState, now: UInt64) -> Bool {
        guard now - d.secondStarted >= 1_000_000_000 else { return false }
        d.facts.fps = Double(d.framesThisSecond) * 1e9 / Double(now - d.secondStarted)
        d.framesThisSecond = 0
        d.secondStarted = now
        return true
    }

    /// One tile's record: u16 x, y, w, h, u32 length, then its bytes.
    private func encodeTile(_ t: Tile, pixels: UnsafeRawPointer, stride: Int) -> (index: Int, record: ByteBuffer) {
        var rgb = [UInt8](repeating: 0, count: t.width * t.height * 3)
        var i = 0
        for y in t.y..<(t.y + t.height) {
            let line = pixels + y * stride + t.x * 4
            for x in 0..<t.width {
                let p = line.loadUnaligned(fromByteOffset: 4 * x, as: UInt32.self)
                rgb[i] = UInt8(truncatingIfNeeded: p >> 16); rgb[i + 1] = UInt8(truncatingIfNeeded: p >> 8); rgb[i + 2] = UInt8(truncatingIfNeeded: p)
                i += 3
            }
        }
        let payload = encoding == .raw ? rgb : ((try? PNG.encode(RGBImage(width: t.width, height: t.height, pixels: rgb))) ?? [])
        var b = ByteBuffer()
        b.reserveCapacity(12 + payload.count)
        b.writeInteger(UInt16(t.x), endianness: .little); b.writeInteger(UInt16(t.y), endianness: .little)
        b.writeInteger(UInt16(t.width), endianness: .little); b.writeInteger(UInt16(t.height), endianness: .little)
        b.writeInteger(UInt32(payload.count), endianness: .little)
        b.writeBytes(payload)
        return ((t.y / ScreenWatcher.tileSize) << 16 | (t.x / ScreenWatcher.tileSize), b)
    }

    /// u8 kind 1, u8 encoding, u16 device, u16 width, u16 height, u32 tiles, tile records.
    private func frameMessage(device: Int, width: Int, height: Int, tiles: [ByteBuffer]) -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(12 + tiles.reduce(0) { $0 + $1.readableBytes })
        b.writeInteger(UInt8(1)); b.writeInteger(encoding.code)
        b.writeInteger(UInt16(device), endianness: .little)
        b.writeInteger(UInt16(width), endianness: .little); b.writeInteger(UInt16(height), endianness: .little)
        b.writeInteger(UInt32(tiles.count), endianness: .little)
        for var t in tiles { b.writeBuffer(&t) }
        return b
    }

    private func encodeFacts(_ facts: Facts) -> ByteBuffer {
        ByteBuffer(bytes: (try? JSONEncoder().encode(facts)) ?? Data())
    }

    // MARK: Browsers

    func added(_ client: WebClient) {
        let hello = state.withLock { s -> [ByteBuffer] in
            s.clients[ObjectIdentifier(client)] = client
            let names = (try? JSONSerialization.data(withJSONObject: ["type": "devices", "devices": s.devices.map(\.name)])) ?? Data()
            return [ByteBuffer(bytes: names)] + s.devices.map { encodeFacts($0.facts) }
        }
        logger.info("browser connected (\(clientCount) now)")
        for h in hello { client.send(text: h, output: self) }
        client.markAllStale(count: hello.count - 1)
        client.catchUp(output: self)
    }

    func removed(_ client: WebClient) {
        let left = state.withLock { s -> Int in
            s.clients[ObjectIdentifier(client)] = nil
            return s.clients.count
        }
        logger.info("browser disconnected (\(left) now)")
    }

    /// The whole screen of `device` from the cache, as one message; nil while nothing is shown.
    func fullFrame(device: Int) -> ByteBuffer? {
        let (width, height, tiles) = state.withLock { s in
            (s.devices[device].width, s.devices[device].height, s.devices[device].facts.enabled ? Array(s.devices[device].tiles.values) : [])
        }
        guard !tiles.isEmpty else { return nil }
        return frameMessage(device: device, width: width, height: height, tiles: tiles)
    }

    func count(bytes: Int) { state.withLock { $0.bytesQueued += UInt64(bytes) } }
    func countSkipped() { state.withLock { $0.framesSkipped += 1 } }
}

struct WebFailure: Error, CustomStringConvertible {
    let description: String
}

/// A fourcc's four characters ("XR24").
func fourccName(_ fourcc: UInt32) -> String {
    String(decoding: (0..<4).map { UInt8(truncatingIfNeeded: fourcc >> (8 * UInt32($0))) }, as: UTF8.self)
}

/// One browser's WebSocket, touched only on its channel's event loop.
final class WebClient: @unchecked Sendable {
    // @unchecked: every method runs on `channel.eventLoop`.
    let channel: Channel
    /// Devices whose frames this browser missed: it needs the whole screen.
    private var stale: Set<Int> = []

    init(channel: Channel) { self.channel = channel }

    func markAllStale(count: Int) { stale = Set(0..<count) }

    func send(text: ByteBuffer, output: WebOutput) {
        guard channel.isWritable else { return }   // facts are repeated every second
        write(WebSocketFrame(fin: true, opcode: .text, data: text), output: output)
    }

    func send(delta: ByteBuffer, device: Int, output: WebOutput) {
        guard channel.isWritable, !stale.contains(device) else {
            stale.insert(device)
            output.countSkipped()
            return
        }
        write(WebSocketFrame(fin: true, opcode: .binary, data: delta), output: output)
    }

    /// Sends whole screens for the devices it missed, while it can take them.
    func catchUp(output: WebOutput) {
        for device in stale.sorted() where channel.isWritable {
            stale.remove(device)
            if let full = output.fullFrame(device: device) {
                write(WebSocketFrame(fin: true, opcode: .binary, data: full), output: output)
            }
        }
    }

    private func write(_ frame: WebSocketFrame, output: WebOutput) {
        output.count(bytes: frame.data.readableBytes)
        channel.writeAndFlush(frame, promise: nil)
    }
}

/// The WebSocket side of a browser's connection.
final class WebSocketHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let output: WebOutput
    private var client: WebClient?

    init(output: WebOutput) { self.output = output }

    func handlerAdded(context: ChannelHandlerContext) {
        let c = WebClient(channel: context.channel)
        client = c
        output.added(c)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let client { output.removed(client) }
        client = nil
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { client?.catchUp(output: output) }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .connectionClose:
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: context.channel.allocator.buffer(capacity: 0))
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in channel.close(promise: nil) }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.data)), promise: nil)
        default:
            break   // the page sends nothing else; input is not forwarded to guests
        }
    }
}

/// Plain HTTP: the page at /, 404 elsewhere.
final class PageHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let name = "umdev-page"
    let page: ByteBuffer
    private var head: HTTPRequestHead?

    init(page: ByteBuffer) { self.page = page }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let h = head else { return }
            head = nil
            let found = h.method == .GET && (h.uri == "/" || h.uri.hasPrefix("/?"))
            let body = found ? page : ByteBuffer(string: "not found\n")
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/html; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            headers.add(name: "Cache-Control", value: "no-store")
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: found ? .ok : .notFound, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
