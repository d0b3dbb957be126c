import CShim
import Descriptors
import Foundation
import Glibc
import PCI
import SystemPackage
import UnixSocket

/// One request on the control socket (Protocol/CONTROL.md). Which fields
/// matter depends on `request`; the others are left out.
public struct ControlRequest: Codable, Equatable, Sendable {
    public var request: String
    public var uuid: String?
    public var type: String?
    public var attrs: Attributes?
    public var auto: Bool?
    public var force: Bool?
    public var timeout: Double?
    public var defined: Bool?
    public var name: String?
    public var value: String?
    public var path: String?
    /// modify: attributes to add (in order) and names to remove.
    public var addAttrs: Attributes?
    public var delAttrs: [String]?
    /// compat: a running instance or a saved state file, into an instance or a type.
    public var from: String?
    public var to: String?

    enum CodingKeys: String, CodingKey {
        case request, uuid, type, attrs, auto, force, timeout, defined, name, value, path
        case addAttrs = "add_attrs", delAttrs = "del_attrs", from, to
    }

    public init(_ request: String) { self.request = request }
}

/// An instance as `list` and `start` report it.
public struct InstanceInfo: Codable, Equatable, Sendable {
    public var uuid: String
    public var type: String
    /// "running" (no client) or "attached".
    public var state: String
    public var socket: String
    public var displaySocket: String?
    public var clientPID: Int32?
    /// mtty: each port's host end (the pty, the socket path, or "loopback").
    public var ports: [String]?
    public var attrs: Attributes
    /// There is also a definition with this UUID.
    public var defined: Bool
    public var device: DeviceProfile?

    enum CodingKeys: String, CodingKey {
        case uuid, type, state, socket, displaySocket = "display_socket", clientPID = "client_pid", ports, attrs, defined, device
    }
}

/// A definition as `list --defined` reports it.
public struct DefinitionInfo: Codable, Equatable, Sendable {
    public var uuid: String
    public var definition: Definition
    /// An instance with this UUID is running.
    public var running: Bool
}

/// The answer to one request: `ok`, and either the fields that request
/// fills or `error`.
public struct ControlResponse: Codable, Equatable, Sendable {
    public var ok: Bool
    public var error: LifecycleError?
    public var types: [TypeInfo]?
    public var instances: [InstanceInfo]?
    public var definitions: [DefinitionInfo]?
    public var instance: InstanceInfo?
    public var uuid: String?
    public var value: String?
    public var has: Bool?
    public var kind: AttributeSpec.Kind?
    public var compatible: Bool?
    public var reason: String?
    /// compat: the state's identity and the target's.
    public var source: MigrationIdentity?
    public var target: MigrationIdentity?
    public var bytes: Int?
    public var released: String?
    public var upgrade: UpgradeInfo?

    public init(ok: Bool = true) { self.ok = ok }

    public static func failure(_ e: LifecycleError) -> ControlResponse {
        var r = ControlResponse(ok: false)
        r.error = e
        return r
    }
}

/// The control socket's framing: one JSON request ended by a newline (or
/// by the client closing its side), one JSON response ended by a newline.
/// A request about a state file carries the file's descriptor (SCM_RIGHTS)
/// with its first bytes.
/// How a live upgrade went, as the new process tells the client that asked.
public struct UpgradeInfo: Codable, Equatable, Sendable {
    /// The daemon's process id: the same before and after (exec).
    public var pid: Int32
    public var previousVersion: String
    public var version: String
    /// Instances handed over.
    public var instances: Int

    enum CodingKeys: String, CodingKey { case pid, previousVersion = "previous_version", version, instances }
}

public enum ControlWire {
    /// Requests larger than this are refused.
    public static let maxRequest = 64 << 10
    /// A client has this long to send its whole request.
    public static let requestTimeout: Double = 5

    /// Sends `request` (and a copy of `descriptor`, which stays the
    /// caller's) to the daemon at `path` and waits for its answer.
    public static func call(_ request: ControlRequest, path: String, descriptor: FileDescriptor? = nil,
                            timeout: Double = 3700) throws(LifecycleError) -> ControlResponse {
        let connection: OwnedDescriptor
        do { connection = try UnixSocket.connect(path: path) } catch {
            throw LifecycleError(.system, "no umdev daemon at \(path) (\(String(cString: strerror(error.errno)))); start one with `umdev daemon`")
        }
        let fd = connection.rawValue   // closed with `connection`
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard let body = try? JSONEncoder().encode(request) else { throw LifecycleError(.invalid, "cannot encode the request") }
        let bytes = Array(body) + [0x0a]
        let sent = bytes.withUnsafeBytes { b in
            var fds = [descriptor?.rawValue ?? -1]
            return umdev_sendmsg(fd, b.baseAddress, b.count, &fds, descriptor == nil ? 0 : 1)
        }
        guard sent == bytes.count else {
            throw LifecycleError(.system, "cannot send to the daemon: \(String(cString: strerror(errno)))")
        }
        shutdown(fd, Int32(SHUT_WR))
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw LifecycleError(.system, "no answer from the daemon: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            reply += chunk[0..<n]
        }
        guard let response = try? JSONDecoder().decode(ControlResponse.self, from: Data(reply)) else {
            throw LifecycleError(.system, reply.isEmpty ? "the daemon closed the connection without answering"
                                                       : "the daemon's answer is not a response (\(reply.count) bytes)")
        }
        return response
    }
}

/// One control client: reads its request (bounded in size and time),
/// answers it, closes.
final class ControlConnection: @unchecked Sendable {
    // @unchecked: used by one thread at a time (created on the accept
    // thread, then handed to the connection's thread).
    let socket: Int32
    let daemon: Daemon

    init(socket: Int32, daemon: Daemon) {
        self.socket = socket
        self.daemon = daemon
    }

    /// Serves the request, then calls `done` and closes: by the time the
    /// client sees its connection end, `done` (the daemon giving back its
    /// place among the control clients) has happened.
    func serve(then done: () -> Void) {
        defer { done(); close(socket) }
        var received: Int32?
        let response: ControlResponse
        let bytes = read(&received)
        // Owned here, for the length of the request; closed when it is answered.
        let descriptor = received.flatMap { SharedDescriptor(adoptingRaw: $0) }
        switch bytes {
        case .failure(let e):
            daemon.logger.warning("control client: \(e.message)")
            response = .failure(e)
        case .success(let bytes):
            do {
                let request = try JSONDecoder().decode(ControlRequest.self, from: Data(bytes))
                response = daemon.handle(request, descriptor: descriptor?.fileDescriptor, connection: socket)
            } catch let e as DecodingError {
                response = .failure(LifecycleError(.invalid, "malformed request: \(DefinitionStore.describe(e))"))
            } catch {
                response = .failure(LifecycleError(.invalid, "malformed request"))
            }
        }
        Self.reply(response, on: socket, wait: true)
    }

    /// The request's bytes up to its newline (or the client's end of
    /// stream); the first descriptor it carries goes to `descriptor`.
    private func read(_ descriptor: inout Int32?) -> Result<[UInt8], LifecycleError> {
        let deadline = monotonicNanoseconds() + UInt64(ControlWire.requestTimeout * 1e9)
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let now = monotonicNanoseconds()
            guard now < deadline else {
                return .failure(LifecycleError(.invalid, "incomplete request: no newline within \(Int(ControlWire.requestTimeout)) s"))
            }
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let ready = umdev_poll_ns(&p, 1, Int64(deadline - now))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { continue }
            var fds: [Int32] = [-1, -1]
            var nfds: Int32 = 0
            var truncated: Int32 = 0
            let n = chunk.withUnsafeMutableBytes { umdev_recvmsg(socket, $0.baseAddress, $0.count, 0, &fds, 2, &nfds, &truncated) }
            if n < 0 && errno == EINTR { continue }
            for fd in fds.prefix(Int(nfds)) {
                if descriptor == nil && nfds == 1 { descriptor = fd } else { close(fd) }
            }
            if nfds > 1 || truncated != 0 || (nfds == 1 && buffer.count > 0 && descriptor == nil) {
                return .failure(LifecycleError(.invalid, "a request carries at most one descriptor"))
            }
            guard n >= 0 else { return .failure(LifecycleError(.system, "reading the request: \(String(cString: strerror(errno)))")) }
            if n == 0 { return buffer.isEmpty ? .failure(LifecycleError(.invalid, "empty request")) : .success(buffer) }
            let piece = chunk[0..<n]
            if let newline = piece.firstIndex(of: 0x0a) {
                buffer += piece[..<newline]
                guard buffer.count <= ControlWire.maxRequest else { return .failure(Self.tooLarge) }
                return .success(buffer)
            }
            buffer += piece
            guard buffer.count <= ControlWire.maxRequest else { return .failure(Self.tooLarge) }
        }
    }

    static let tooLarge = LifecycleError(.invalid, "request larger than \(ControlWire.maxRequest >> 10) KiB")

    /// Writes `response` and a newline; a client that does not read it
    /// within a few seconds (or at all, with `wait` false) loses it.
    static func reply(_ response: ControlResponse, on socket: Int32, wait: Bool) {
        guard let body = try? JSONEncoder().encode(response) else { return }
        let bytes = Array(body) + [0x0a]
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes {
                send(socket, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL) | (wait ? 0 : umdev_msg_dontwait()))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            done += n
        }
    }
}
